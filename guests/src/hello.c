/*
 * hello: prints "hello from hvft", then each argument as "arg[i]=...",
 * one per line, and powers off with code 0.
 */
#include "hvft.h"

int main(int argc, char **argv)
{
	hvft_puts("hello from hvft\n");
	for (int i = 0; i < argc; i++)
		hvft_printf("arg[%d]=%s\n", i, argv[i]);
	return 0;
}
