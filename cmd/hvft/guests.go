package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"hvft/guests"
)

func guestsCommand() *cli.Command {
	return &cli.Command{
		Name:  "guests",
		Usage: "list the built-in guests (name one instead of a path)",
		Action: func(c *cli.Context) error {
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tBYTES\tWHAT")
			for _, g := range guests.List() {
				fmt.Fprintf(w, "%s\t%d\t%s\n", g.Name, g.Size, g.Description)
			}
			return w.Flush()
		},
	}
}
