/*
 * badjump: prints one line, then calls a function pointer to 0x40000000,
 * which is outside RAM (nothing is mapped there). The board is expected to
 * stop the guest with a fetch fault; if execution somehow continues, the
 * guest powers off with code 2.
 */
#include "hvft.h"

#define BAD_ADDRESS 0x40000000UL

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	void (*volatile fn)(void) = (void (*)(void))BAD_ADDRESS;

	hvft_printf("badjump: jumping to %lx\n", BAD_ADDRESS);
	fn();
	hvft_puts("badjump: still alive?!\n");
	return 2;
}
