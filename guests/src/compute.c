/*
 * compute: CPU-bound and fully deterministic (reads no clock, no random,
 * no console input).
 *
 *   args: argv[1] = N, buffer size in MiB (default 4)
 *         argv[2] = R, repetitions (default 1)
 *
 * Fills an N MiB buffer (placed above the image, inside RAM) with xorshift64
 * output (seed 0x9e3779b97f4a7c15, state advanced x ^= x<<13; x ^= x>>7;
 * x ^= x<<17 before each 8-byte little-endian store), then computes one
 * SHA-256 over R back-to-back copies of the buffer (N*R MiB of input).
 * Self-checks the implementation with the FIPS 180-2 vectors "abc" and
 * "abcdbcdecdefghijklmnopq...nopq" first.
 *
 * Output:
 *   compute mib=<N> reps=<R>
 *   sha256 <64 hex digits>
 *   compute ok                 -> power off 0
 * or "compute FAILED" (self-test mismatch) -> power off 1,
 * or "compute: buffer does not fit in RAM" -> power off 2.
 *
 * The SHA-256 compression function is fully unrolled (64 straight-line
 * rounds with the message schedule computed in line), so basic blocks are
 * long.
 */
#include "hvft.h"

struct sha256 {
	uint32_t h[8];
	uint64_t total;        /* bytes hashed */
	uint8_t  buf[64];
	uint32_t fill;
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BS0(x) (ROR(x, 2) ^ ROR(x, 13) ^ ROR(x, 22))
#define BS1(x) (ROR(x, 6) ^ ROR(x, 11) ^ ROR(x, 25))
#define SS0(x) (ROR(x, 7) ^ ROR(x, 18) ^ ((x) >> 3))
#define SS1(x) (ROR(x, 17) ^ ROR(x, 19) ^ ((x) >> 10))
#define CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

#define LOAD_BE32(p) \
	(((uint32_t)(p)[0] << 24) | ((uint32_t)(p)[1] << 16) | \
	 ((uint32_t)(p)[2] << 8) | (uint32_t)(p)[3])

/* message schedule, in place over a 16-word ring */
#define WX(i) (w[(i) & 15] += SS1(w[((i) - 2) & 15]) + w[((i) - 7) & 15] + SS0(w[((i) - 15) & 15]))

#define ROUND(a, b, c, d, e, f, g, h, k, wi) do {                  \
		uint32_t t1 = (h) + BS1(e) + CH(e, f, g) + (k) + (wi);   \
		uint32_t t2 = BS0(a) + MAJ(a, b, c);                     \
		(d) += t1;                                               \
		(h) = t1 + t2;                                           \
	} while (0)

/* 8 rounds, rotating the working variables back into place */
#define ROUNDS8_LOAD(i, k0, k1, k2, k3, k4, k5, k6, k7)                            \
	ROUND(a, b, c, d, e, f, g, h, k0, w[(i) + 0] = LOAD_BE32(p + 4 * ((i) + 0))); \
	ROUND(h, a, b, c, d, e, f, g, k1, w[(i) + 1] = LOAD_BE32(p + 4 * ((i) + 1))); \
	ROUND(g, h, a, b, c, d, e, f, k2, w[(i) + 2] = LOAD_BE32(p + 4 * ((i) + 2))); \
	ROUND(f, g, h, a, b, c, d, e, k3, w[(i) + 3] = LOAD_BE32(p + 4 * ((i) + 3))); \
	ROUND(e, f, g, h, a, b, c, d, k4, w[(i) + 4] = LOAD_BE32(p + 4 * ((i) + 4))); \
	ROUND(d, e, f, g, h, a, b, c, k5, w[(i) + 5] = LOAD_BE32(p + 4 * ((i) + 5))); \
	ROUND(c, d, e, f, g, h, a, b, k6, w[(i) + 6] = LOAD_BE32(p + 4 * ((i) + 6))); \
	ROUND(b, c, d, e, f, g, h, a, k7, w[(i) + 7] = LOAD_BE32(p + 4 * ((i) + 7)))

#define ROUNDS8_EXP(i, k0, k1, k2, k3, k4, k5, k6, k7)        \
	ROUND(a, b, c, d, e, f, g, h, k0, WX((i) + 0));        \
	ROUND(h, a, b, c, d, e, f, g, k1, WX((i) + 1));        \
	ROUND(g, h, a, b, c, d, e, f, k2, WX((i) + 2));        \
	ROUND(f, g, h, a, b, c, d, e, k3, WX((i) + 3));        \
	ROUND(e, f, g, h, a, b, c, d, k4, WX((i) + 4));        \
	ROUND(d, e, f, g, h, a, b, c, k5, WX((i) + 5));        \
	ROUND(c, d, e, f, g, h, a, b, k6, WX((i) + 6));        \
	ROUND(b, c, d, e, f, g, h, a, k7, WX((i) + 7))

static void sha256_block(uint32_t st[8], const uint8_t *p)
{
	uint32_t w[16];
	uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
	uint32_t e = st[4], f = st[5], g = st[6], h = st[7];

	ROUNDS8_LOAD(0,
		0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
		0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u);
	ROUNDS8_LOAD(8,
		0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
		0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u);
	ROUNDS8_EXP(16,
		0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
		0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau);
	ROUNDS8_EXP(24,
		0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
		0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u);
	ROUNDS8_EXP(32,
		0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
		0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u);
	ROUNDS8_EXP(40,
		0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
		0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u);
	ROUNDS8_EXP(48,
		0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
		0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u);
	ROUNDS8_EXP(56,
		0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
		0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u);

	st[0] += a; st[1] += b; st[2] += c; st[3] += d;
	st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

static void sha256_init(struct sha256 *s)
{
	s->h[0] = 0x6a09e667u; s->h[1] = 0xbb67ae85u;
	s->h[2] = 0x3c6ef372u; s->h[3] = 0xa54ff53au;
	s->h[4] = 0x510e527fu; s->h[5] = 0x9b05688cu;
	s->h[6] = 0x1f83d9abu; s->h[7] = 0x5be0cd19u;
	s->total = 0;
	s->fill = 0;
}

static void sha256_update(struct sha256 *s, const void *data, size_t len)
{
	const uint8_t *p = data;

	s->total += len;
	if (s->fill) {
		while (len && s->fill < 64) {
			s->buf[s->fill++] = *p++;
			len--;
		}
		if (s->fill < 64)
			return;
		sha256_block(s->h, s->buf);
		s->fill = 0;
	}
	while (len >= 64) {
		sha256_block(s->h, p);
		p += 64;
		len -= 64;
	}
	while (len--)
		s->buf[s->fill++] = *p++;
}

static void sha256_final(struct sha256 *s, uint8_t out[32])
{
	uint64_t bits = s->total * 8;
	int i;

	s->buf[s->fill++] = 0x80;
	if (s->fill > 56) {
		while (s->fill < 64)
			s->buf[s->fill++] = 0;
		sha256_block(s->h, s->buf);
		s->fill = 0;
	}
	while (s->fill < 56)
		s->buf[s->fill++] = 0;
	for (i = 0; i < 8; i++)
		s->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
	sha256_block(s->h, s->buf);
	for (i = 0; i < 8; i++) {
		out[4 * i + 0] = (uint8_t)(s->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)(s->h[i]);
	}
}

static void to_hex(const uint8_t d[32], char out[65])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hx[d[i] >> 4];
		out[2 * i + 1] = hx[d[i] & 15];
	}
	out[64] = 0;
}

static int self_test_one(const char *msg, const char *want)
{
	struct sha256 s;
	uint8_t d[32];
	char hex[65];

	sha256_init(&s);
	sha256_update(&s, msg, strlen(msg));
	sha256_final(&s, d);
	to_hex(d, hex);
	return hvft_strcmp(hex, want) == 0;
}

static int self_test(void)
{
	int ok = 1;
	ok &= self_test_one("abc",
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	ok &= self_test_one("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		"248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	ok &= self_test_one("",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	return ok;
}

#define MIB (1024UL * 1024UL)
#define TOP_RESERVE (64UL * 1024UL)   /* keep clear of the top of RAM */

int main(int argc, char **argv)
{
	unsigned long mib = argc > 1 ? hvft_atou(argv[1]) : 4;
	unsigned long reps = argc > 2 ? hvft_atou(argv[2]) : 1;
	uint64_t start = ((uint64_t)(uintptr_t)__hvft_image_end + 0xFFFF) & ~0xFFFFULL;
	uint64_t ram = hvft_ram_size();
	uint64_t size = (uint64_t)mib * MIB;
	struct sha256 s;
	uint8_t d[32];
	char hex[65];

	if (mib == 0)
		mib = 4, size = 4 * MIB;
	hvft_printf("compute mib=%lu reps=%lu\n", mib, reps);

	if (!self_test()) {
		hvft_puts("compute FAILED\n");
		return 1;
	}
	if (ram < TOP_RESERVE || start + size > ram - TOP_RESERVE) {
		hvft_puts("compute: buffer does not fit in RAM\n");
		return 2;
	}

	uint64_t *buf = (uint64_t *)(uintptr_t)start;
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (uint64_t i = 0; i < size / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = x;
	}

	sha256_init(&s);
	for (unsigned long r = 0; r < reps; r++)
		sha256_update(&s, buf, size);
	sha256_final(&s, d);
	to_hex(d, hex);
	hvft_printf("sha256 %s\n", hex);
	hvft_puts("compute ok\n");
	return 0;
}
