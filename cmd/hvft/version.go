package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"hvft/replica"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "list the version of every protocol and format this build speaks, and where another is refused",
		Description: "Two replicas, a log and its replay, a joining backup and its primary must agree on these:\n" +
			"each row says what the version covers and where a mismatch is refused.",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the table as JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("version takes no arguments (got %q)", c.Args().First())
			}
			vs := replica.Versions()
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(vs)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tVERSION\tCOVERS\tREFUSED BY")
			for _, v := range vs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", v.Name, v.Version, v.Covers, v.Refused)
			}
			return w.Flush()
		},
	}
}
