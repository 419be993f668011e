/*
 * printer: prints N numbered lines through the SDK's printf, then the
 * count of bytes it printed. Under the adaptive clock a quiet epoch ends
 * at every 4096th console byte, inside printf's loop: the console must
 * still hold every line exactly once.
 *
 *   args: argv[1] = N, lines (default 3000)
 *
 * Output: N lines "printer: line <i> of <N>, the quick brown fox", then
 *   printer: bytes=<n>
 *   printer ok                 -> power off 0
 */
#include "hvft.h"

int main(int argc, char **argv)
{
	unsigned n = argc > 1 ? (unsigned)hvft_atou(argv[1]) : 3000;
	unsigned bytes = 0;

	for (unsigned i = 1; i <= n; i++)
		bytes += (unsigned)hvft_printf("printer: line %u of %u, the quick brown fox\n", i, n);
	hvft_printf("printer: bytes=%u\n", bytes);
	hvft_puts("printer ok\n");
	return 0;
}
