// Probes of libunicorn's own behaviour (probe.c).
#include <stdint.h>
int hv_probe_stop_in_hook(int precise, char *out, int max);
int hv_probe_stale_code(void);
int hv_probe_stale_program(uint8_t *loop, int loop_max, uint8_t *stub, int stub_max);
