/*
 * diskkv: a tiny key-value log on the block device.
 *
 *   args: argv[1] = mode: "run" (default) or "verify"
 *         argv[2] = N, number of puts (default 50; run only)
 *         argv[3] = seed (default 1; run only)
 *         argv[4] = K, number of distinct keys (default 8, clamped to 1..1024)
 *
 * On-disk record: one 512-byte sector, little-endian:
 *
 *   0   u32 magic 0x3152564B ("KVR1")
 *   4   u32 seq (1, 2, 3, ... contiguous); the record with seq n is sector n
 *   8   u8  keylen (1..32)
 *   9   u8  vallen (1..64)
 *   10  u16 reserved, 0
 *   12  key bytes, then value bytes, then zeros
 *   508 u32 CRC-32 (hvft_crc32) of bytes 0..507
 *
 * Boot: scan sectors 1, 2, ... (reading up to 128 sectors per command); the
 * chain ends at the first sector whose magic or CRC is wrong or whose seq is
 * not its sector number, or at the end of the disk. A record inside the
 * chain with keylen/vallen out of range or reserved != 0 is a broken chain.
 * Prints:
 *
 *   diskkv boot records=R
 *   diskkv chain ok                          (or: diskkv chain BROKEN at sector X, exit 1)
 *
 * run: N times: seq = last + 1,
 *        x     = splitmix64(seed ^ seq)
 *        key   = "k" + decimal(x % K)
 *        value = 16 lowercase hex digits of splitmix64(seed * 0x9E3779B97F4A7C15 + seq)
 *      write the record to sector seq and print "put SEQ KEY=VALUE";
 *      then for every key in the index (in order of its first appearance in
 *      the chain) read its latest record back, check it, print
 *      "get KEY=VALUE ok"; finally "diskkv done records=R reissues=M".
 *      splitmix64(z): z += 0x9E3779B97F4A7C15;
 *                     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *                     z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *                     return z ^ (z >> 31);   (all mod 2^64)
 * verify: print "rec SEQ KEY=VALUE" for every record of the chain in order,
 *      then "diskkv verify ok records=R".
 *
 * Exit: 0 ok; 1 failure (write/read error, broken chain, get FAILED);
 *       2 no disk; 3 disk full; 4 index full (more than 2048 distinct keys);
 *       5 unknown mode.
 */
#include "hvft.h"

#define KV_MAGIC      0x3152564Bu
#define KV_HDR        12
#define KV_CRC_OFF    508
#define KV_MAX_KEY    32
#define KV_MAX_VAL    64
#define KV_MAX_K      1024
#define KV_MAX_KEYS   2048          /* distinct keys in the index */
#define KV_SLOTS      4096          /* hash slots, power of two */
#define KV_BATCH      HVFT_DISK_MAX_COUNT
#define GOLDEN        0x9E3779B97F4A7C15ULL

struct entry {
	uint32_t seq;
	uint8_t  keylen, vallen;
	char     key[KV_MAX_KEY + 1];   /* NUL-terminated copies */
	char     val[KV_MAX_VAL + 1];
};

static unsigned char batch[KV_BATCH * HVFT_SECTOR_SIZE] __attribute__((aligned(4096)));
static unsigned char rec[HVFT_SECTOR_SIZE] __attribute__((aligned(512)));
static struct entry entries[KV_MAX_KEYS];   /* in order of first appearance */
static uint32_t nentries;
static uint16_t slots[KV_SLOTS];            /* entry index + 1; 0 = empty */

static uint32_t nsectors;   /* disk size */
static uint32_t records;    /* chain length = seq of the last record */

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static uint64_t splitmix64(uint64_t z)
{
	z += GOLDEN;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

enum { REC_OK, REC_END, REC_BROKEN };

/* Classifies the 512 bytes r that were read from sector `sector`. */
static int check_record(const unsigned char *r, uint32_t sector)
{
	if (get32(r) != KV_MAGIC)
		return REC_END;
	if (get32(r + KV_CRC_OFF) != hvft_crc32(r, KV_CRC_OFF))
		return REC_END;
	if (get32(r + 4) != sector)
		return REC_END;
	if (r[8] < 1 || r[8] > KV_MAX_KEY || r[9] < 1 || r[9] > KV_MAX_VAL || r[10] || r[11])
		return REC_BROKEN;
	return REC_OK;
}

static uint32_t hash_key(const char *k, uint32_t n)
{
	uint32_t h = 2166136261u;
	for (uint32_t i = 0; i < n; i++) {
		h ^= (unsigned char)k[i];
		h *= 16777619u;
	}
	return h;
}

/* Returns the entry for key, creating it (seq 0) if absent; NULL if the
 * index is full. */
static struct entry *index_get(const char *key, uint32_t keylen, int create)
{
	uint32_t i = hash_key(key, keylen) & (KV_SLOTS - 1);

	for (;; i = (i + 1) & (KV_SLOTS - 1)) {
		struct entry *e;
		if (slots[i] == 0)
			break;
		e = &entries[slots[i] - 1];
		if (e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
			return e;
	}
	if (!create || nentries >= KV_MAX_KEYS)
		return 0;
	struct entry *e = &entries[nentries++];
	slots[i] = (uint16_t)nentries;
	memset(e, 0, sizeof(*e));
	memcpy(e->key, key, keylen);
	e->keylen = (uint8_t)keylen;
	return e;
}

static void index_full(void)
{
	hvft_printf("diskkv: index full\n");
	hvft_poweroff(4);
}

/* Records a valid record r in the index. */
static void index_record(const unsigned char *r)
{
	uint32_t kl = r[8], vl = r[9];
	struct entry *e = index_get((const char *)r + KV_HDR, kl, 1);
	if (!e)
		index_full();
	e->seq = get32(r + 4);
	e->vallen = (uint8_t)vl;
	memcpy(e->val, r + KV_HDR + kl, vl);
	e->val[vl] = 0;
}

/* Prints "<prefix>KEY=VALUE" of record r (no newline). */
static void print_record(const char *prefix, const unsigned char *r)
{
	hvft_puts(prefix);
	hvft_write(r + KV_HDR, r[8]);
	hvft_putc('=');
	hvft_write(r + KV_HDR + r[8], r[9]);
}

/* Reads sectors [first, first+n) into batch (n <= KV_BATCH). */
static void read_batch(uint32_t first, uint32_t n)
{
	if (hvft_disk_read(first, batch, n) != 0) {
		hvft_printf("diskkv read error at sector %u\n", first);
		hvft_poweroff(1);
	}
}

static void boot_scan(void)
{
	uint32_t s = 1;
	int broken = 0;

	while (s < nsectors && !broken) {
		uint32_t n = nsectors - s > KV_BATCH ? KV_BATCH : nsectors - s;
		uint32_t i;
		read_batch(s, n);
		for (i = 0; i < n; i++) {
			const unsigned char *r = batch + i * HVFT_SECTOR_SIZE;
			int c = check_record(r, s + i);
			if (c == REC_OK) {
				index_record(r);
				records = s + i;
				continue;
			}
			if (c == REC_BROKEN)
				broken = 1;
			break;
		}
		if (i < n)
			break;
		s += n;
	}
	hvft_printf("diskkv boot records=%u\n", records);
	if (broken) {
		hvft_printf("diskkv chain BROKEN at sector %u\n", records + 1);
		hvft_poweroff(1);
	}
	hvft_printf("diskkv chain ok\n");
}

static int fmt_u64(char *out, uint64_t v)
{
	char tmp[24];
	int n = 0, len = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		out[len++] = tmp[--n];
	return len;
}

static void do_verify(void)
{
	uint32_t s = 1;

	while (s <= records) {
		uint32_t n = records - s + 1 > KV_BATCH ? KV_BATCH : records - s + 1;
		read_batch(s, n);
		for (uint32_t i = 0; i < n; i++) {
			const unsigned char *r = batch + i * HVFT_SECTOR_SIZE;
			if (check_record(r, s + i) != REC_OK) {
				hvft_printf("diskkv verify FAILED at sector %u\n", s + i);
				hvft_poweroff(1);
			}
			hvft_printf("rec %u ", s + i);
			print_record("", r);
			hvft_putc('\n');
		}
		s += n;
	}
	hvft_printf("diskkv verify ok records=%u\n", records);
}

static void do_run(uint32_t nputs, uint64_t seed, uint32_t nkeys)
{
	static const char hex[] = "0123456789abcdef";

	for (uint32_t i = 0; i < nputs; i++) {
		uint32_t seq = records + 1;
		char key[KV_MAX_KEY], val[16];
		uint32_t kl;
		uint64_t v;
		struct entry *e;

		if (seq >= nsectors) {
			hvft_printf("diskkv: disk full\n");
			hvft_poweroff(3);
		}
		key[0] = 'k';
		kl = 1 + (uint32_t)fmt_u64(key + 1, splitmix64(seed ^ (uint64_t)seq) % nkeys);
		v = splitmix64(seed * GOLDEN + (uint64_t)seq);
		for (int d = 0; d < 16; d++)
			val[d] = hex[(v >> (60 - 4 * d)) & 0xF];

		memset(rec, 0, sizeof(rec));
		put32(rec, KV_MAGIC);
		put32(rec + 4, seq);
		rec[8] = (unsigned char)kl;
		rec[9] = 16;
		memcpy(rec + KV_HDR, key, kl);
		memcpy(rec + KV_HDR + kl, val, 16);
		put32(rec + KV_CRC_OFF, hvft_crc32(rec, KV_CRC_OFF));

		e = index_get(key, kl, 1);   /* before the write: no record without an entry */
		if (!e)
			index_full();
		if (hvft_disk_write(seq, rec, 1) != 0) {
			hvft_printf("diskkv write error at %u\n", seq);
			hvft_poweroff(1);
		}
		e->seq = seq;
		e->vallen = 16;
		memcpy(e->val, val, 16);
		e->val[16] = 0;
		records = seq;
		hvft_printf("put %u %s=%s\n", seq, e->key, e->val);
	}

	for (uint32_t j = 0; j < nentries; j++) {
		struct entry *e = &entries[j];
		int ok = hvft_disk_read(e->seq, rec, 1) == 0 &&
			 check_record(rec, e->seq) == REC_OK &&
			 rec[8] == e->keylen && memcmp(rec + KV_HDR, e->key, e->keylen) == 0 &&
			 rec[9] == e->vallen && memcmp(rec + KV_HDR + e->keylen, e->val, e->vallen) == 0;
		if (!ok) {
			hvft_printf("get %s FAILED\n", e->key);
			hvft_poweroff(1);
		}
		hvft_printf("get %s=%s ok\n", e->key, e->val);
	}
	hvft_printf("diskkv done records=%u reissues=%u\n", records, hvft_disk_reissues());
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "run";
	uint32_t nputs = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 50;
	uint64_t seed = argc > 3 ? (uint64_t)hvft_atou(argv[3]) : 1;
	unsigned long k = argc > 4 ? hvft_atou(argv[4]) : 8;
	int verify;
	int sectors;

	if (hvft_strcmp(mode, "run") == 0)
		verify = 0;
	else if (hvft_strcmp(mode, "verify") == 0)
		verify = 1;
	else {
		hvft_printf("diskkv: unknown mode %s\n", mode);
		return 5;
	}
	if (k < 1)
		k = 1;
	if (k > KV_MAX_K)
		k = KV_MAX_K;

	sectors = hvft_disk_sectors();
	if (sectors <= 0) {
		hvft_printf("diskkv: no disk\n");
		return 2;
	}
	nsectors = (uint32_t)sectors;

	boot_scan();
	if (verify)
		do_verify();
	else
		do_run(nputs, seed, (uint32_t)k);
	return 0;
}
