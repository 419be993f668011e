/*
 * badop: marks IDT gate 6 (#UD) not-present (clears the P bit), prints one
 * line, and executes ud2. With no usable gate for vector 6 the board is
 * expected to stop the guest (on real hardware this would escalate to #NP /
 * #DF / triple fault). If execution somehow continues, powers off with 3.
 */
#include "hvft.h"

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;

	hvft_set_exception_handler(HVFT_EXC_UD, 0);
	hvft_idt[HVFT_EXC_UD].type_attr &= (uint8_t)~0x80;  /* P = 0 */
	__asm__ volatile("" ::: "memory");

	hvft_puts("badop: executing ud2 with IDT gate 6 not present\n");
	__asm__ volatile("ud2" ::: "memory");
	hvft_puts("badop: still alive?!\n");
	return 3;
}
