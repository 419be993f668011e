/*
 * spin: never halts and never powers off. A tight loop that calls nothing
 * and touches no devices (for testing --max-epochs / --timeout).
 */
#include "hvft.h"

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	uint64_t x = 1;
	for (;;) {
		/* keep the loop body alive without any memory or port access */
		__asm__ volatile("" : "+r"(x));
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	}
}
