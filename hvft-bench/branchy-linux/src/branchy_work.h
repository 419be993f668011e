/*
 * branchy_work.h - a CoreMark-class workload made of short basic blocks:
 * linked-list find/sort/reverse/remove/insert, a byte-driven number
 * scanner (state machine), bitwise CRC-16 and CRC-32, small integer matrix
 * operations with data-dependent branches.
 *
 * Plain C99 with <stdint.h> only: no SDK, no libc, no floating point, no
 * allocation (static arrays), no dependence on addresses (the checksum
 * folds values, never pointers). The hvft guest "branchy" (branchy.c) is a
 * thin wrapper; the same header builds as a Linux program, e.g.
 *
 *     #include <stdio.h>
 *     #include <stdlib.h>
 *     #include "branchy_work.h"
 *     int main(int c, char **v) {
 *         uint32_t e, s = c > 1 ? (uint32_t)atoi(v[1]) : BRANCHY_DEFAULT_SIZE;
 *         uint32_t n = c > 2 ? (uint32_t)atoi(v[2]) : BRANCHY_DEFAULT_ITERS;
 *         uint32_t sum = branchy_run(s, n, BRANCHY_DEFAULT_SEED, &e);
 *         printf("%08x errors=%u\n", sum, e);
 *     }
 *
 *     gcc -O2 -static -o branchy main.c
 *
 * branchy_run(size, iters, seed, &errors) returns the checksum; errors
 * counts failed internal checks (a sorted list out of order, a list that
 * lost or gained nodes, a reversed-twice list that differs): 0 on a
 * correct machine. size is clamped to BRANCHY_MIN_SIZE..BRANCHY_MAX_SIZE
 * (branchy_clamp_size). branchy_selftest() checks the CRCs against their
 * published check values and returns the number of failures.
 *
 * Per iteration, with S = size:
 *   list:    S nodes (value, index); find 4 values; merge-sort by value,
 *            check order and fold; reverse, reverse again, check; remove
 *            and re-insert a node; merge-sort by index (restore); fold.
 *   scanner: 8*S bytes of generated text (digits, signs, '.', 'e', ',',
 *            junk); a state machine classifies each comma-separated token
 *            as int, float, exponent or invalid; counts and transitions
 *            are folded; then a few input bytes are mutated.
 *   crc:     CRC-16/CCITT-FALSE and CRC-32 bitwise over the scanner input.
 *   matrix:  M x M int16 (M = S/4 clamped to 2..32): C = A*B, C += k,
 *            C *= k (wrapping), then a clipped "matrix sum" with
 *            branches on each element; A and B are perturbed.
 * All results are folded into a CRC-16 chain and a 32-bit mix; the
 * returned checksum combines both.
 */
#ifndef BRANCHY_WORK_H
#define BRANCHY_WORK_H

#include <stdint.h>

#define BRANCHY_MIN_SIZE      8u
#define BRANCHY_MAX_SIZE      1024u
#define BRANCHY_DEFAULT_SIZE  64u
#define BRANCHY_DEFAULT_ITERS 3000u
#define BRANCHY_DEFAULT_SEED  0x4b1dc0deu
#define BRANCHY_MAX_M         32u

struct branchy_node {
	struct branchy_node *next;
	int16_t value;
	uint16_t index;
};

static struct branchy_node branchy_nodes[BRANCHY_MAX_SIZE];
static uint8_t branchy_text[8 * BRANCHY_MAX_SIZE];
static int16_t branchy_a[BRANCHY_MAX_M * BRANCHY_MAX_M];
static int16_t branchy_b[BRANCHY_MAX_M * BRANCHY_MAX_M];
static int32_t branchy_c[BRANCHY_MAX_M * BRANCHY_MAX_M];

static inline uint32_t branchy_clamp_size(uint32_t s)
{
	if (s < BRANCHY_MIN_SIZE)
		return BRANCHY_MIN_SIZE;
	if (s > BRANCHY_MAX_SIZE)
		return BRANCHY_MAX_SIZE;
	return s;
}

/* xorshift32; never 0 */
static inline uint32_t branchy_rand(uint32_t *st)
{
	uint32_t x = *st;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*st = x;
	return x;
}

/* ---- CRCs (bitwise, one branch per bit) ------------------------------ */

static inline uint16_t branchy_crc16_byte(uint16_t crc, uint8_t b)
{
	crc ^= (uint16_t)((uint16_t)b << 8);
	for (int i = 0; i < 8; i++) {
		if (crc & 0x8000)
			crc = (uint16_t)((crc << 1) ^ 0x1021);
		else
			crc = (uint16_t)(crc << 1);
	}
	return crc;
}

static inline uint16_t branchy_crc16_u32(uint16_t crc, uint32_t v)
{
	crc = branchy_crc16_byte(crc, (uint8_t)v);
	crc = branchy_crc16_byte(crc, (uint8_t)(v >> 8));
	crc = branchy_crc16_byte(crc, (uint8_t)(v >> 16));
	return branchy_crc16_byte(crc, (uint8_t)(v >> 24));
}

static inline uint32_t branchy_crc32_byte(uint32_t crc, uint8_t b)
{
	crc ^= b;
	for (int i = 0; i < 8; i++) {
		if (crc & 1)
			crc = (crc >> 1) ^ 0xEDB88320u;
		else
			crc >>= 1;
	}
	return crc;
}

static uint16_t branchy_crc16(const uint8_t *p, uint32_t n)
{
	uint16_t crc = 0xFFFF;      /* CRC-16/CCITT-FALSE */
	while (n--)
		crc = branchy_crc16_byte(crc, *p++);
	return crc;
}

static uint32_t branchy_crc32(const uint8_t *p, uint32_t n)
{
	uint32_t crc = 0xFFFFFFFFu;
	while (n--)
		crc = branchy_crc32_byte(crc, *p++);
	return crc ^ 0xFFFFFFFFu;
}

static inline uint32_t branchy_mix(uint32_t h, uint32_t v)
{
	h ^= v;
	h *= 0x01000193u;
	h ^= h >> 15;
	return h;
}

/* ---- linked list ------------------------------------------------------ */

/* merge sort; by value (ties by index) when by_value, else by index */
static int branchy_less(const struct branchy_node *a, const struct branchy_node *b, int by_value)
{
	if (by_value) {
		if (a->value != b->value)
			return a->value < b->value;
		return a->index < b->index;
	}
	return a->index < b->index;
}

static struct branchy_node *branchy_sort(struct branchy_node *list, int by_value)
{
	uint32_t insize = 1;

	if (!list)
		return 0;
	for (;;) {
		struct branchy_node *p = list, *tail = 0;
		uint32_t merges = 0;
		list = 0;
		while (p) {
			struct branchy_node *q = p;
			uint32_t psize = 0, qsize = insize;
			merges++;
			for (uint32_t i = 0; i < insize; i++) {
				psize++;
				q = q->next;
				if (!q)
					break;
			}
			while (psize > 0 || (qsize > 0 && q)) {
				struct branchy_node *e;
				if (psize == 0) {
					e = q; q = q->next; qsize--;
				} else if (qsize == 0 || !q) {
					e = p; p = p->next; psize--;
				} else if (!branchy_less(q, p, by_value)) {
					e = p; p = p->next; psize--;
				} else {
					e = q; q = q->next; qsize--;
				}
				if (tail)
					tail->next = e;
				else
					list = e;
				tail = e;
			}
			p = q;
		}
		tail->next = 0;
		if (merges <= 1)
			return list;
		insize *= 2;
	}
}

static struct branchy_node *branchy_reverse(struct branchy_node *list)
{
	struct branchy_node *prev = 0;
	while (list) {
		struct branchy_node *n = list->next;
		list->next = prev;
		prev = list;
		list = n;
	}
	return prev;
}

static struct branchy_node *branchy_find(struct branchy_node *list, int16_t v, uint32_t *steps)
{
	while (list) {
		(*steps)++;
		if (list->value == v)
			return list;
		list = list->next;
	}
	return 0;
}

static uint32_t branchy_length(const struct branchy_node *l)
{
	uint32_t n = 0;
	while (l) {
		n++;
		l = l->next;
	}
	return n;
}

static uint16_t branchy_list_fold(uint16_t crc, const struct branchy_node *l)
{
	while (l) {
		crc = branchy_crc16_u32(crc, (uint32_t)(uint16_t)l->value | (uint32_t)l->index << 16);
		l = l->next;
	}
	return crc;
}

static struct branchy_node *branchy_list_init(uint32_t n, uint32_t *rng)
{
	for (uint32_t i = 0; i < n; i++) {
		branchy_nodes[i].next = i + 1 < n ? &branchy_nodes[i + 1] : 0;
		branchy_nodes[i].index = (uint16_t)i;
		branchy_nodes[i].value = (int16_t)(branchy_rand(rng) & 0x7fff) - 0x4000;
	}
	return &branchy_nodes[0];
}

static struct branchy_node *branchy_list_iter(struct branchy_node *list, uint32_t n, uint32_t it,
					      uint32_t *rng, uint16_t *crc, uint32_t *errors)
{
	uint32_t steps = 0, found = 0;
	struct branchy_node *p, *q, *prev;

	/* find a few values: some present, some not */
	for (int k = 0; k < 4; k++) {
		int16_t want = (k & 1) ? branchy_nodes[(it * 7 + (uint32_t)k) % n].value
				       : (int16_t)(branchy_rand(rng) & 0x7fff);
		if (branchy_find(list, want, &steps))
			found++;
	}
	*crc = branchy_crc16_u32(*crc, steps << 8 | found);

	/* sort by value, check order */
	list = branchy_sort(list, 1);
	for (p = list; p && p->next; p = p->next)
		if (branchy_less(p->next, p, 1))
			(*errors)++;
	*crc = branchy_list_fold(*crc, list);

	/* reverse twice: must be the same list */
	q = list;
	list = branchy_reverse(list);
	*crc = branchy_crc16_u32(*crc, (uint32_t)(uint16_t)list->value);
	list = branchy_reverse(list);
	if (list != q)
		(*errors)++;

	/* remove a node picked by the data, re-insert it elsewhere with a new value */
	{
		uint32_t pos = (uint32_t)(uint16_t)list->value % n, ins;
		struct branchy_node *victim;
		prev = 0;
		p = list;
		for (uint32_t i = 0; i < pos && p->next; i++) {
			prev = p;
			p = p->next;
		}
		victim = p;
		if (prev)
			prev->next = victim->next;
		else
			list = victim->next;
		victim->value = (int16_t)(victim->value ^ (int16_t)(branchy_rand(rng) & 0x3ff));
		ins = branchy_rand(rng) % n;
		if (ins == 0 || !list) {
			victim->next = list;
			list = victim;
		} else {
			p = list;
			for (uint32_t i = 1; i < ins && p->next; i++)
				p = p->next;
			victim->next = p->next;
			p->next = victim;
		}
	}

	/* restore index order */
	list = branchy_sort(list, 0);
	if (branchy_length(list) != n)
		(*errors)++;
	for (p = list; p && p->next; p = p->next)
		if (p->next->index != p->index + 1)
			(*errors)++;
	*crc = branchy_list_fold(*crc, list);
	return list;
}

/* ---- number scanner (state machine) ----------------------------------- */

enum { BS_START, BS_SIGN, BS_INT, BS_DOT, BS_FRAC, BS_EXP, BS_EXPSIGN, BS_SCI, BS_INVALID, BS_COUNT };

static void branchy_text_init(uint32_t len, uint32_t *rng)
{
	static const char alphabet[] = "0123456789012345678901234567+-..eE,,,, xz";
	for (uint32_t i = 0; i < len; i++)
		branchy_text[i] = (uint8_t)alphabet[branchy_rand(rng) % (sizeof(alphabet) - 1)];
}

static uint32_t branchy_scan(uint32_t len, uint32_t counts[BS_COUNT], uint32_t *transitions)
{
	uint32_t state = BS_START, tokens = 0;

	for (uint32_t i = 0; i < len; i++) {
		uint8_t c = branchy_text[i];
		uint32_t next = state;

		if (c == ',') {
			counts[state]++;
			tokens++;
			state = BS_START;
			(*transitions)++;
			continue;
		}
		switch (state) {
		case BS_START:
			if (c >= '0' && c <= '9')
				next = BS_INT;
			else if (c == '+' || c == '-')
				next = BS_SIGN;
			else if (c == '.')
				next = BS_DOT;
			else
				next = BS_INVALID;
			break;
		case BS_SIGN:
			if (c >= '0' && c <= '9')
				next = BS_INT;
			else if (c == '.')
				next = BS_DOT;
			else
				next = BS_INVALID;
			break;
		case BS_INT:
			if (c >= '0' && c <= '9')
				next = BS_INT;
			else if (c == '.')
				next = BS_FRAC;
			else if (c == 'e' || c == 'E')
				next = BS_EXP;
			else
				next = BS_INVALID;
			break;
		case BS_DOT:
			if (c >= '0' && c <= '9')
				next = BS_FRAC;
			else
				next = BS_INVALID;
			break;
		case BS_FRAC:
			if (c >= '0' && c <= '9')
				next = BS_FRAC;
			else if (c == 'e' || c == 'E')
				next = BS_EXP;
			else
				next = BS_INVALID;
			break;
		case BS_EXP:
			if (c == '+' || c == '-')
				next = BS_EXPSIGN;
			else if (c >= '0' && c <= '9')
				next = BS_SCI;
			else
				next = BS_INVALID;
			break;
		case BS_EXPSIGN:
			if (c >= '0' && c <= '9')
				next = BS_SCI;
			else
				next = BS_INVALID;
			break;
		case BS_SCI:
			if (c >= '0' && c <= '9')
				next = BS_SCI;
			else
				next = BS_INVALID;
			break;
		default:
			next = BS_INVALID;
			break;
		}
		if (next != state)
			(*transitions)++;
		state = next;
	}
	counts[state]++;
	return tokens + 1;
}

static void branchy_text_mutate(uint32_t len, uint32_t it, uint32_t *rng)
{
	static const char repl[] = "7,.-e3+E9x";
	for (int k = 0; k < 4; k++) {
		uint32_t pos = branchy_rand(rng) % len;
		branchy_text[pos] = (uint8_t)repl[(it + (uint32_t)k + pos) % (sizeof(repl) - 1)];
	}
}

/* ---- matrices ---------------------------------------------------------- */

static void branchy_matrix_init(uint32_t m, uint32_t *rng)
{
	for (uint32_t i = 0; i < m * m; i++) {
		branchy_a[i] = (int16_t)((branchy_rand(rng) & 0x1ff) - 0x100);
		branchy_b[i] = (int16_t)((branchy_rand(rng) & 0x1ff) - 0x100);
	}
}

static uint32_t branchy_matrix_sum(uint32_t m, int32_t clip)
{
	uint32_t ret = 0;
	int32_t prev = 0;
	int64_t tmp = 0;            /* at most 1024 int32 terms: no overflow */
	for (uint32_t i = 0; i < m; i++) {
		for (uint32_t j = 0; j < m; j++) {
			int32_t cur = branchy_c[i * m + j];
			tmp += cur;
			if (tmp > clip) {
				ret += 10;
				tmp = 0;
			} else {
				ret += (cur > prev) ? 1 : 0;
			}
			prev = cur;
		}
	}
	return ret;
}

static uint32_t branchy_matrix_iter(uint32_t m, uint32_t it)
{
	int32_t k = (int32_t)(it & 0xff) - 0x80;
	uint32_t r = 0;

	for (uint32_t i = 0; i < m; i++) {
		for (uint32_t j = 0; j < m; j++) {
			uint32_t s = 0;     /* wrapping sum of exact int16 products */
			for (uint32_t x = 0; x < m; x++)
				s += (uint32_t)((int32_t)branchy_a[i * m + x] * (int32_t)branchy_b[x * m + j]);
			branchy_c[i * m + j] = (int32_t)s;
		}
	}
	r = branchy_mix(r, branchy_matrix_sum(m, 1 << 18));
	for (uint32_t i = 0; i < m * m; i++)
		branchy_c[i] = (int32_t)((uint32_t)branchy_c[i] + (uint32_t)k);
	r = branchy_mix(r, branchy_matrix_sum(m, 1 << 16));
	for (uint32_t i = 0; i < m * m; i++)
		branchy_c[i] = (int32_t)((uint32_t)branchy_c[i] * (uint32_t)(k | 1));
	r = branchy_mix(r, branchy_matrix_sum(m, 1 << 20));
	/* bit extraction with branches */
	for (uint32_t i = 0; i < m * m; i++) {
		uint32_t v = ((uint32_t)branchy_c[i] >> ((i & 3) * 2)) & 0xf;
		if (v > 7)
			r += v;
		else if (v == 0)
			r ^= i;
		else
			r = branchy_mix(r, v);
	}
	/* perturb A and B so the next iteration differs */
	branchy_a[it % (m * m)] = (int16_t)(branchy_a[it % (m * m)] + 1);
	branchy_b[(it * 3) % (m * m)] = (int16_t)(branchy_b[(it * 3) % (m * m)] ^ 0x55);
	return r;
}

/* ---- entry points ------------------------------------------------------ */

static uint32_t branchy_selftest(void)
{
	static const uint8_t check[9] = { '1', '2', '3', '4', '5', '6', '7', '8', '9' };
	uint32_t fails = 0;
	if (branchy_crc16(check, 9) != 0x29B1)
		fails++;
	if (branchy_crc32(check, 9) != 0xCBF43926u)
		fails++;
	return fails;
}

static uint32_t branchy_run(uint32_t size, uint32_t iters, uint32_t seed, uint32_t *errors)
{
	uint32_t n = branchy_clamp_size(size);
	uint32_t len = 8 * n;
	uint32_t m = n / 4;
	uint32_t rng = seed ? seed : 1;
	uint32_t h = 0x811c9dc5u;
	uint16_t crc = 0xFFFF;
	struct branchy_node *list;

	if (m < 2)
		m = 2;
	if (m > BRANCHY_MAX_M)
		m = BRANCHY_MAX_M;
	*errors = 0;
	list = branchy_list_init(n, &rng);
	branchy_text_init(len, &rng);
	branchy_matrix_init(m, &rng);

	for (uint32_t it = 0; it < iters; it++) {
		uint32_t counts[BS_COUNT] = { 0 };
		uint32_t transitions = 0, tokens;

		list = branchy_list_iter(list, n, it, &rng, &crc, errors);

		tokens = branchy_scan(len, counts, &transitions);
		for (int s = 0; s < BS_COUNT; s++)
			crc = branchy_crc16_u32(crc, counts[s]);
		h = branchy_mix(h, tokens ^ transitions << 12);
		branchy_text_mutate(len, it, &rng);

		if ((it & 3) == 0) {
			h = branchy_mix(h, branchy_crc16(branchy_text, len));
			h = branchy_mix(h, branchy_crc32(branchy_text, len));
		}

		h = branchy_mix(h, branchy_matrix_iter(m, it));
		h = branchy_mix(h, crc);
	}
	return h ^ ((uint32_t)crc << 16);
}

#endif /* BRANCHY_WORK_H */
