/* featurize._fast: one pass over raw JSON bytes into hashed ids, offsets and dense rows.
 *
 * The fast path of featurize.core.Featurizer (see its module doc). It reads the common
 * case only, and exactly: strict JSON (RFC 8259) with strings free of escapes in the
 * places it keeps (keys, sparse values, sample_id, strategy), well-formed UTF-8, no
 * duplicate keys, no null where the contract reads a field. Anything else -- a bad
 * record, a null, an escape, a correction of another label -- is not decided here:
 * the record is marked "slow" and Featurizer reads it with its Arrow path, which
 * names the reason. So this file never has to agree with the Arrow path on an error,
 * only on the arrays of a well-formed record, which the tests compare with the
 * reference (tests/test_featurize.py) on generated records.
 *
 * Parser(sparse_names, raw_flags, dense_names, label, cache_size)
 *   .samples(values) -> (ok, ids, offsets, dense, label, event_ms, fake, id_xor, one)
 *       ok        bytearray[n]              1 = read here, 0 = slow (left to Arrow)
 *       ids       [bytearray int64[k_f]]    per sparse field, of the ok records in order
 *       offsets   [bytearray int64[m + 1]]  per sparse field; m = ok records
 *       dense     bytearray float32[m * d]
 *       label     bytearray float32[m]; event_ms int64[m]; fake bool[m]
 *       id_xor    int: XOR of stable_hash("sample_id", sample_id) over the ok records
 *       one       bytes[n_sparse]: 1 where each ok record has exactly one id of the field
 *   .request(body, max_instances) -> None (left to Arrow) or
 *       (single, m, ids, offsets, dense, unknown, one) with unknown {"sparse.NAME": count}
 *
 * Ids: blake2b (RFC 7693) with an 8-byte digest of field + "\x1f" + value, its first 8
 * bytes read as a little-endian int64 (featurize.hashing, "blake2b64-field-v1"); raw
 * fields keep their decimal int64. A bounded cache maps (field, value) to its id (a
 * value of 1-8 bytes in its field's table, any other in a shared one: Cache); the
 * values it misses and the sample ids are hashed eight at a time (b2_ids: one vector
 * register holds a state word of all eight, AVX-512 or AVX2 chosen at load time).
 * A parser serves one call at a time (its lock); samples() parses with the GIL released.
 *
 * Where the time goes (perf, 763-byte Samples of 26 sparse and 13 dense fields): the
 * cache's probes (memory: they are prefetched a record at a time, and a large table is
 * asked for huge pages, or most probes also miss the TLB), the strings (scanned 16
 * bytes at a time with SSE2, else 8 with SWAR), the keys (a producer writes its fields
 * in one order: the name expected next is one masked 8-byte compare), blake2b (a
 * fresh batch misses the cache for ~3 of its 26 values a record).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* the per-value steps of the hot loop, inlined into it (measured: a few per cent) */
#if defined(__GNUC__)
#define HOT static inline __attribute__((always_inline))
#else
#define HOT static inline
#endif

#include <math.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ blake2b-64 */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) { /* little-endian on any host */
    uint64_t x = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&x, p, 8);
#else
    for (int i = 7; i >= 0; i--) x = (x << 8) | p[i];
#endif
    return x;
}

#define B2_G(a, b, c, d, x, y)          \
    do {                                \
        a = a + b + (x);                \
        d = rotr64(d ^ a, 32);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 24);          \
        a = a + b + (y);                \
        d = rotr64(d ^ a, 16);          \
        c = c + d;                      \
        b = rotr64(b ^ c, 63);          \
    } while (0)

/* blake2b's 12 rounds over state v[16] and message m[16] with G (B2_G: words; B2_G8:
   arrays of LANES words), unrolled: the message schedule becomes constant offsets */
#if defined(__clang__)
#define B2_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define B2_UNROLL _Pragma("GCC unroll 12")
#else
#define B2_UNROLL
#endif
#define B2_ROUNDS(G, v, m)                                       \
    B2_UNROLL for (int r = 0; r < 12; r++) {                     \
        const uint8_t *s = B2_SIGMA[r];                          \
        G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);            \
        G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);            \
        G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);           \
        G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);           \
        G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);           \
        G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);         \
        G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);          \
        G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);          \
    }

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t; /* messages here are far below 2^64 bytes: the high counter stays 0 */
    if (last) v[14] = ~v[14];
    B2_ROUNDS(B2_G, v, m);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The int64 id of prefix + data: blake2b with an 8-byte digest, no key. */
static int64_t b2_id(const uint8_t *prefix, size_t plen, const uint8_t *data, size_t dlen) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, digest length 8 */
    size_t total = plen + dlen, done = 0, fill = 0;
    /* feed prefix then data through one 128-byte block; a full block is compressed
       only once more input follows it (the last block is flagged as such) */
    const uint8_t *parts[2] = {prefix, data};
    size_t lens[2] = {plen, dlen};
    for (int k = 0; k < 2; k++) {
        const uint8_t *p = parts[k];
        size_t n = lens[k];
        while (n) {
            if (fill == 128) {
                done += 128;
                b2_compress(h, block, done, 0);
                fill = 0;
            }
            size_t take = 128 - fill < n ? 128 - fill : n;
            memcpy(block + fill, p, take);
            fill += take;
            p += take;
            n -= take;
        }
    }
    memset(block + fill, 0, 128 - fill);
    b2_compress(h, block, total, 1);
    return (int64_t)h[0];
}

/* The ids of LANES one-block messages (at most 128 bytes each) at once: the same
   function as b2_id, written lane by lane over arrays so that the compiler keeps each
   state word of all lanes in one vector register (AVX-512: 8 lanes in one, AVX2: two);
   the sample ids of a batch are hashed this way (sid_xor). */
enum { LANES = 8 };

#if !defined(CLONES) && defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones) /* one build per level, chosen at load time */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

#define B2_G8(a, b, c, d, x, y)                  \
    for (int l = 0; l < LANES; l++) {            \
        a[l] = a[l] + b[l] + x[l];               \
        d[l] = rotr64(d[l] ^ a[l], 32);          \
        c[l] = c[l] + d[l];                      \
        b[l] = rotr64(b[l] ^ c[l], 24);          \
        a[l] = a[l] + b[l] + y[l];               \
        d[l] = rotr64(d[l] ^ a[l], 16);          \
        c[l] = c[l] + d[l];                      \
        b[l] = rotr64(b[l] ^ c[l], 63);          \
    }

/* out[l] = the id of the first len[l] bytes of block[l] (zero after them), len <= 128 */
CLONES static void b2_ids(const uint8_t block[LANES][128], const uint64_t len[LANES],
                          int64_t out[LANES]) {
    uint64_t m[16][LANES], v[16][LANES];
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < LANES; l++) m[i][l] = load64(block[l] + 8 * i);
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < LANES; l++) {
            v[i][l] = B2_IV[i] ^ (i ? 0 : 0x01010000ULL ^ 8);
            v[i + 8][l] = B2_IV[i];
        }
    for (int l = 0; l < LANES; l++) {
        v[12][l] ^= len[l];
        v[14][l] = ~v[14][l];
    }
    B2_ROUNDS(B2_G8, v, m);
    for (int l = 0; l < LANES; l++)
        out[l] = (int64_t)(B2_IV[0] ^ 0x01010000ULL ^ 8 ^ v[0][l] ^ v[8][l]);
}

typedef struct {
    const uint8_t *p;
    size_t len;
} Span;

/* XOR of the ids of prefix + s[i] over i < k: LANES at a time where they fit a block */
static uint64_t xor_ids(const uint8_t *prefix, size_t plen, const Span *s, size_t k) {
    uint8_t block[LANES][128];
    uint64_t len[LANES];
    int64_t out[LANES];
    uint64_t x = 0;
    int l = 0;
    for (size_t i = 0; i <= k; i++) {
        if (i < k && plen + s[i].len > 128) {
            x ^= (uint64_t)b2_id(prefix, plen, s[i].p, s[i].len);
            continue;
        }
        if (i < k) {
            len[l] = plen + s[i].len;
            memcpy(block[l], prefix, plen);
            memcpy(block[l] + plen, s[i].p, s[i].len);
            memset(block[l] + len[l], 0, 128 - len[l]);
            l++;
        }
        if (l == LANES || (i == k && l)) {
            int used = l;
            for (; l < LANES; l++) { /* idle lanes: hashed, not counted */
                len[l] = 0;
                memset(block[l], 0, 128);
            }
            b2_ids(block, len, out);
            for (l = 0; l < used; l++) x ^= (uint64_t)out[l];
            l = 0;
        }
    }
    return x;
}

/* ------------------------------------------------------------------ growable buffers */

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap && buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static inline int buf_put8(Buf *b, const void *p) { /* a fixed size: no call to memcpy */
    if (b->len + 8 > b->cap && buf_reserve(b, 8)) return -1;
    memcpy(b->data + b->len, p, 8);
    b->len += 8;
    return 0;
}

static PyObject *buf_take(Buf *b) { /* a bytearray copy of the buffer */
    return PyByteArray_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
}

/* ------------------------------------------------------------------ value cache */

/* The cache: a value of 1-8 bytes (most ids and categories) in its field's table of
   16-byte slots, four to a cache line, the value's bytes as the key (a fast-path string
   has no byte below 0x20, so no short value is 0, the empty slot, and its bytes give its
   length); any other value in one table of 32-byte slots, with its field, length and
   bytes (in the arena when longer than 8). Their probes miss the CPU's caches when the
   tables are large: the smaller slots halve the memory that a batch's probes touch. */
typedef struct { /* 32 bytes: two to a cache line */
    uint64_t key;   /* hash of (field, value); 0 = empty slot */
    int64_t id;
    uint32_t field, len;
    uint64_t data;  /* the value's bytes when len <= 8, else its offset in the arena */
} Entry;

typedef struct { /* 16 bytes */
    uint64_t w; /* the value's bytes (short_word); 0 = empty slot */
    int64_t id;
} Short;

typedef struct {
    Short *slots;
    size_t cap, count, mapped;
} ShortTable;

typedef struct {
    Entry *slots;
    size_t cap, count, limit; /* count: values in all tables, cleared together at limit */
    Buf arena;
    size_t mapped; /* bytes of the mapping that holds slots (0: calloc) */
    ShortTable *fields; /* per sparse field */
    Py_ssize_t n_fields;
    size_t long_count;
} Cache;

static inline int is_short(size_t n) { return n - 1 < 8; } /* 1 to 8 bytes */

/* Zeroed memory for a table. A large one is a mapping of its own, asked to sit on huge
   pages: its probes land anywhere in it, and with 4 KiB pages most would also miss the TLB. */
enum { HUGE = 2 << 20 };

static void *slots_alloc(size_t cap, size_t each, size_t *mapped) {
    size_t size = cap * each;
    *mapped = 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= HUGE) {
        void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED) {
            madvise(m, size, MADV_HUGEPAGE); /* advice: without it, ordinary pages */
            *mapped = size;
            return m;
        }
    }
#endif
    return calloc(cap, each);
}

static void slots_free(void *slots, size_t mapped) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (mapped) {
        munmap(slots, mapped);
        return;
    }
#endif
    free(slots);
}

static inline int same(const uint8_t *a, const uint8_t *b, size_t n) {
    while (n >= 8) { /* inline: most names and values are short */
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8, b += 8, n -= 8;
    }
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

/* The bytes of a value of n <= 8 bytes as one word, zero above n (the layout memcpy
   gives): one load when 8 bytes can be read at s (end: the end of the buffer). */
static inline uint64_t short_word(const uint8_t *s, size_t n, const uint8_t *end) {
    uint64_t w = 0;
    if (end - s >= 8) {
        memcpy(&w, s, 8);
        if (n < 8) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            w &= n ? ~0ULL << (8 * (8 - n)) : 0;
#else
            w &= (1ULL << (8 * n)) - 1;
#endif
        }
    } else {
        memcpy(&w, s, n);
    }
    return w;
}

/* The cache's hash of a value of n <= 8 bytes held in word w (short_word). */
static inline uint64_t mix_short(uint32_t field, uint64_t w, size_t n) {
    uint64_t h = (0x9E3779B97F4A7C15ULL ^ ((uint64_t)field << 32) ^ n ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ULL;
    h ^= h >> 32;
    return h ? h : 1;
}

static uint64_t mix_hash(uint32_t field, const uint8_t *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)field << 32) ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ULL;
    h ^= h >> 32;
    return h ? h : 1;
}

/* The cache's hash of a value of 1-8 bytes in word w, within its field's table (a
   bijection: 0 only for 0, the empty slot). */
static inline uint64_t mix_word(uint64_t w) {
    w = (w ^ (w >> 31)) * 0x7FB5D329728EA185ULL;
    w = (w ^ (w >> 27)) * 0x81DADEF4BC2DD44DULL;
    return w ^ (w >> 33);
}

static void cache_clear(Cache *c) {
    if (c->slots) memset(c->slots, 0, c->cap * sizeof(Entry));
    for (Py_ssize_t f = 0; f < c->n_fields; f++) {
        ShortTable *t = &c->fields[f];
        if (t->slots) memset(t->slots, 0, t->cap * sizeof(Short));
        t->count = 0;
    }
    c->count = c->long_count = 0;
    c->arena.len = 0;
}

/* A slot's hash for its place in a table, 0 for an empty slot. */
static uint64_t short_hash(const void *slot) { return mix_word(((const Short *)slot)->w); }
static uint64_t entry_hash(const void *slot) { return ((const Entry *)slot)->key; }

/* A table `old` of *cap slots of `each` bytes doubled (`first` slots when empty), every
   slot re-placed at its hash; old freed. NULL (old kept) when there is no memory. */
static void *table_grow(void *old, size_t *cap, size_t *mapped, size_t each, size_t first,
                        uint64_t (*hash)(const void *)) {
    size_t n = *cap ? *cap * 2 : first, m;
    uint8_t *s = slots_alloc(n, each, &m);
    if (!s) return NULL;
    for (size_t i = 0; i < *cap; i++) {
        const uint8_t *e = (const uint8_t *)old + i * each;
        uint64_t h = hash(e);
        if (!h) continue;
        size_t j = h & (n - 1);
        while (hash(s + j * each)) j = (j + 1) & (n - 1);
        memcpy(s + j * each, e, each);
    }
    slots_free(old, *mapped);
    *mapped = m;
    *cap = n;
    return s;
}

static int short_grow(ShortTable *t) {
    Short *s = table_grow(t->slots, &t->cap, &t->mapped, sizeof(Short), 1024, short_hash);
    return s ? (t->slots = s, 0) : -1;
}

static int cache_grow(Cache *c) {
    Entry *s = table_grow(c->slots, &c->cap, &c->mapped, sizeof(Entry), 4096, entry_hash);
    return s ? (c->slots = s, 0) : -1;
}

/* ------------------------------------------------------------------ the parser object */

typedef struct {
    const uint8_t *name;
    size_t len;
    /* the key as compact JSON writes it, '"' name '"' ':', when it fits 8 bytes (qlen);
       qlen = 0: the name needs the general path */
    uint64_t pat, mask;
    size_t qlen;
} Name;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n_sparse, n_dense;
    Name *sparse, *dense;
    char *raw;         /* per sparse field: decimal int64 ids, not hashed */
    uint8_t **prefix;  /* per sparse field: name + "\x1f" */
    Name label;
    PyObject *names;   /* keeps the name bytes alive */
    Cache cache;
    /* per call */
    Buf *ids, *offsets;
    Buf pend;          /* Pending values of the current record */
    struct Misses *miss; /* values the cache missed, hashed together (flush) */
    Buf dense_out, label_out, time_out, fake_out, ok_out;
    Buf sids;          /* Span of each committed record's sample_id (xor_ids) */
    uint32_t *seen;    /* per record: sparse / dense fields already read (duplicates) */
    float *row;        /* the dense row of the current record */
    PyObject *unknown; /* request: counts of unknown feature names, or NULL */
    Py_ssize_t hint_sparse, hint_dense; /* find_name's guesses */
    PyThread_type_lock lock; /* one call at a time (lock_parser) */
} Parser;

enum { OK = 0, SLOW = 1, FAIL = -1 }; /* FAIL: a Python error is set (memory) */

static inline const uint8_t *entry_bytes(const Cache *c, const Entry *e) {
    return e->len <= 8 ? (const uint8_t *)&e->data : (const uint8_t *)c->arena.data + e->data;
}

/* A value waiting for its id: the cache is probed per record, after every slot the
   record needs was prefetched (a large cache misses the CPU's caches on most probes;
   prefetching them together overlaps those misses) */
typedef struct {
    uint64_t key;
    const uint8_t *s;
    uint32_t field, len;
    size_t at;  /* index of the id in ids[field] */
    uint64_t w; /* a short value's bytes (short_word) */
} Pending;

/* Values the cache missed (in committed records only), kept until LANES distinct ones
   are there or the call ends (flush): then they are hashed together (b2_ids), their ids
   written where they go, and they enter the cache. A value missed again before that is
   queued as a copy of the first (dup). The cache does not change between two flushes. */
enum { MISS_MAX = 64 };
struct Misses {
    Pending q[MISS_MAX];
    int dup[MISS_MAX]; /* index of the first of the same value, or -1 */
    int n, distinct;
};

static void cache_put(Cache *c, uint32_t f, const uint8_t *s, size_t n, uint64_t k, uint64_t w,
                      int64_t id) {
    if (c->count >= c->limit) cache_clear(c);
    if (is_short(n)) {
        ShortTable *t = &c->fields[f];
        if ((t->count + 1) * 2 > t->cap && short_grow(t)) return; /* no memory: uncached */
        size_t j = k & (t->cap - 1);
        while (t->slots[j].w) j = (j + 1) & (t->cap - 1);
        t->slots[j] = (Short){w, id};
        t->count++;
        c->count++;
        return;
    }
    if ((c->long_count + 1) * 2 > c->cap && cache_grow(c)) return; /* no memory: uncached */
    uint64_t data = w; /* short values: their bytes */
    if (n > 8) {
        data = c->arena.len;
        if (buf_put(&c->arena, s, n)) return;
    }
    size_t j = k & (c->cap - 1);
    while (c->slots[j].key) j = (j + 1) & (c->cap - 1);
    c->slots[j] = (Entry){k, id, f, (uint32_t)n, data};
    c->long_count++;
    c->count++;
}

static void flush(Parser *P) {
    struct Misses *M = P->miss;
    uint8_t block[LANES][128];
    uint64_t len[LANES];
    int64_t out[LANES], id[MISS_MAX];
    int lane[MISS_MAX], l = 0;
    for (int i = 0; i < M->n; i++) {
        const Pending *q = &M->q[i];
        size_t plen = P->sparse[q->field].len + 1;
        lane[i] = -1;
        if (M->dup[i] >= 0) continue;
        if (plen + q->len > 128) { /* more than one block: alone */
            id[i] = b2_id(P->prefix[q->field], plen, q->s, q->len);
            continue;
        }
        len[l] = plen + q->len;
        memcpy(block[l], P->prefix[q->field], plen);
        memcpy(block[l] + plen, q->s, q->len);
        memset(block[l] + len[l], 0, 128 - len[l]);
        lane[i] = l++;
    }
    if (l) {
        for (int j = l; j < LANES; j++) { /* idle lanes */
            len[j] = 0;
            memset(block[j], 0, 128);
        }
        b2_ids(block, len, out);
    }
    for (int i = 0; i < M->n; i++) {
        const Pending *q = &M->q[i];
        if (lane[i] >= 0) id[i] = out[lane[i]];
        if (M->dup[i] >= 0) id[i] = id[M->dup[i]];
        memcpy(P->ids[q->field].data + 8 * q->at, &id[i], 8);
        if (M->dup[i] < 0) cache_put(&P->cache, q->field, q->s, q->len, q->key, q->w, id[i]);
    }
    M->n = M->distinct = 0;
}

/* Queue value p, which the cache missed (flush). */
static void missed(Parser *P, const Pending *p) {
    struct Misses *M = P->miss;
    int dup = -1;
    for (int i = 0; i < M->n && dup < 0; i++) {
        const Pending *q = &M->q[i];
        if (M->dup[i] < 0 && q->key == p->key && q->field == p->field && q->len == p->len &&
            (p->len <= 8 ? q->w == p->w : same(q->s, p->s, p->len)))
            dup = i;
    }
    M->q[M->n] = *p;
    M->dup[M->n++] = dup;
    if (dup < 0) M->distinct++;
    if (M->distinct == LANES || M->n == MISS_MAX) flush(P);
}

/* The id of pending value p from the cache, or 0 and p queued (missed) */
static inline int cached_id(Parser *P, const Pending *p, int64_t *id) {
    Cache *c = &P->cache;
    if (is_short(p->len)) {
        const ShortTable *t = &c->fields[p->field];
        if (!t->cap) return 0;
        for (size_t j = p->key & (t->cap - 1); t->slots[j].w; j = (j + 1) & (t->cap - 1))
            if (t->slots[j].w == p->w) {
                *id = t->slots[j].id;
                return 1;
            }
        return 0;
    }
    if (c->cap) {
        size_t j = p->key & (c->cap - 1);
        for (Entry *e; (e = &c->slots[j])->key; j = (j + 1) & (c->cap - 1))
            if (e->key == p->key && e->field == p->field && e->len == p->len &&
                (p->len <= 8 ? e->data == p->w : same(entry_bytes(c, e), p->s, p->len))) {
                *id = e->id;
                return 1;
            }
    }
    return 0;
}

HOT int pend(Parser *P, uint32_t f, const uint8_t *s, size_t n, const uint8_t *end) {
    uint64_t w = n <= 8 ? short_word(s, n, end) : 0;
    Cache *c = &P->cache;
    uint64_t k;
    if (is_short(n)) { /* no byte of s is 0 (plain_string): w is not the empty slot */
        const ShortTable *t = &c->fields[f];
        k = mix_word(w);
        if (t->cap) __builtin_prefetch(&t->slots[k & (t->cap - 1)]);
    } else {
        k = n ? mix_hash(f, s, n) : mix_short(f, 0, 0);
        if (c->cap) __builtin_prefetch(&c->slots[k & (c->cap - 1)]);
    }
    int64_t placeholder = 0;
    if (n > UINT32_MAX) return SLOW;
    if (P->pend.len + sizeof(Pending) > P->pend.cap && buf_reserve(&P->pend, sizeof(Pending)))
        return FAIL;
    /* field by field: a struct built on the stack and copied stalls on store forwarding */
    Pending *p = (Pending *)(P->pend.data + P->pend.len);
    p->key = k, p->s = s, p->field = f, p->len = (uint32_t)n, p->at = P->ids[f].len / 8;
    p->w = w;
    P->pend.len += sizeof(Pending);
    return buf_put8(&P->ids[f], &placeholder) ? FAIL : OK;
}

/* The ids of the current record's pending values: from the cache, or queued (missed) */
static void resolve(Parser *P) {
    Pending *p = (Pending *)P->pend.data;
    size_t k = P->pend.len / sizeof(Pending);
    Cache *c = &P->cache;
    if (c->cap) /* values in the arena: fetch them too before comparing */
        for (size_t i = 0; i < k; i++) {
            if (p[i].len <= 8) continue;
            const Entry *e = &c->slots[p[i].key & (c->cap - 1)];
            if (e->key == p[i].key && e->len > 8) __builtin_prefetch(c->arena.data + e->data);
        }
    for (size_t i = 0; i < k; i++) {
        int64_t id;
        if (cached_id(P, &p[i], &id))
            memcpy(P->ids[p[i].field].data + 8 * p[i].at, &id, 8);
        else
            missed(P, &p[i]);
    }
    P->pend.len = 0;
}

/* ------------------------------------------------------------------ JSON scanning */

typedef struct {
    const uint8_t *p, *end;
    int depth;
} Scan;

#define MAX_DEPTH 64

static inline void ws(Scan *s) {
    const uint8_t *p = s->p, *end = s->end;
    if (p < end && *p > ' ') return; /* compact JSON: no whitespace, one compare */
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    s->p = p;
}

/* One UTF-8 sequence at p (first byte >= 0x80); its length, or 0 if not well-formed. */
static int utf8_len(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    int n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return 0;
    if (end - p < n) return 0;
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return n;
}

/* The length of the character at p inside a string (ASCII or a UTF-8 sequence); 0 if
   it is not well-formed. */
static inline int char_len(const uint8_t *p, const uint8_t *end) {
    return *p < 0x80 ? 1 : utf8_len(p, end);
}

/* A string without escapes at s->p (the opening quote): its bytes in [*a, *a + *n). */
HOT int plain_string(Scan *s, const uint8_t **a, size_t *n) {
    if (s->p >= s->end || *s->p != '"') return SLOW;
    const uint8_t *p = s->p + 1, *end = s->end;
    const uint8_t *start = p;
    while (p < end) {
#if defined(__SSE2__)
        /* 16 bytes at a time: the first '"', '\\', control byte or byte >= 0x80 (signed < 0x20) */
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
                _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
            unsigned m = (unsigned)_mm_movemask_epi8(hit);
            if (m) {
                p += __builtin_ctz(m);
                goto found;
            }
            p += 16;
        }
#endif
        /* 8 plain ASCII bytes at a time: none is '"', '\\', a control byte or >= 0x80 */
        while (end - p >= 8) { /* the lowest flagged byte is exact (borrows go up) */
            uint64_t w, lo = 0x0101010101010101ULL, hi = 0x8080808080808080ULL;
            memcpy(&w, p, 8);
            uint64_t q = w ^ (lo * '"'), b = w ^ (lo * '\\');
            uint64_t special = (((q - lo) & ~q) | ((b - lo) & ~b) | (w - lo * 0x20) | w) & hi;
            if (special) {
                p += __builtin_ctzll(special) >> 3;
                break;
            }
            p += 8;
        }
        if (p >= end) break;
#if defined(__SSE2__)
    found:;
#endif
        uint8_t c = *p;
        if (c == '"') {
            *a = start;
            *n = (size_t)(p - start);
            s->p = p + 1;
            return OK;
        }
        if (c == '\\' || c < 0x20) return SLOW;
        int k = char_len(p, end);
        if (!k) return SLOW;
        p += k;
    }
    return SLOW;
}

static int hex4(const uint8_t *p, const uint8_t *end, uint32_t *out) {
    if (end - p < 4) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

/* Any string (escapes allowed, unpaired surrogates not), skipped. */
static int skip_string(Scan *s) {
    const uint8_t *p = s->p + 1, *end = s->end;
    while (p < end) {
        uint8_t c = *p;
        if (c == '"') {
            s->p = p + 1;
            return OK;
        }
        if (c < 0x20) return SLOW;
        if (c == '\\') {
            if (end - p < 2) return SLOW;
            uint8_t e = p[1];
            if (e == 'u') {
                uint32_t u;
                if (!hex4(p + 2, end, &u)) return SLOW;
                p += 6;
                if (u >= 0xDC00 && u <= 0xDFFF) return SLOW;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    uint32_t lo;
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return SLOW;
                    p += 6;
                }
            } else if (strchr("\"\\/bfnrt", e) && e) {
                p += 2;
            } else {
                return SLOW;
            }
        } else {
            int k = char_len(p, end);
            if (!k) return SLOW;
            p += k;
        }
    }
    return SLOW;
}

/* A JSON number at s->p (grammar checked). *frac_exp: it has a fraction or exponent. */
static int number_span(Scan *s, const uint8_t **a, size_t *n, int *frac_exp) {
    const uint8_t *p = s->p, *end = s->end, *start = p;
    *frac_exp = 0;
    if (p < end && *p == '-') p++;
    if (p >= end) return SLOW;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return SLOW;
    }
    if (p < end && *p == '.') {
        *frac_exp = 1;
        p++;
        if (p >= end || *p < '0' || *p > '9') return SLOW;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *frac_exp = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return SLOW;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    *a = start;
    *n = (size_t)(p - start);
    s->p = p;
    return OK;
}

static int skip_value(Scan *s);

static int skip_container(Scan *s, uint8_t close) {
    if (++s->depth > MAX_DEPTH) return SLOW;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return OK;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || skip_string(s)) return SLOW;
            ws(s);
            if (s->p >= s->end || *s->p != ':') return SLOW;
            s->p++;
            ws(s);
        }
        if (skip_value(s)) return SLOW;
        ws(s);
        if (s->p >= s->end) return SLOW;
        if (*s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        if (*s->p != close) return SLOW;
        s->p++;
        s->depth--;
        return OK;
    }
}

static int literal(Scan *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n)) return SLOW;
    s->p += n;
    return OK;
}

/* Any JSON value, checked and skipped. */
static int skip_value(Scan *s) {
    if (s->p >= s->end) return SLOW;
    const uint8_t *a;
    size_t n;
    int fe;
    switch (*s->p) {
    case '"': return skip_string(s);
    case '{': return skip_container(s, '}');
    case '[': return skip_container(s, ']');
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: return number_span(s, &a, &n, &fe);
    }
}

/* An integer that fits int64 (no fraction, no exponent). */
static int int64_value(Scan *s, int64_t *out) {
    const uint8_t *a;
    size_t n;
    int fe;
    if (number_span(s, &a, &n, &fe) || fe) return SLOW;
    int neg = a[0] == '-';
    size_t i = neg;
    if (n - i > 19) return SLOW;
    uint64_t v = 0;
    for (; i < n; i++) v = v * 10 + (uint64_t)(a[i] - '0'); /* 19 digits fit uint64 */
    if ((!neg && v > (uint64_t)INT64_MAX) || (neg && v > (uint64_t)INT64_MAX + 1)) return SLOW;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return OK;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A number as the nearest double (what Python's json.loads and float() give), read in
   the same pass that checks its grammar. */
HOT int double_value(Scan *s, double *out) {
    const uint8_t *p = s->p, *end = s->end, *a = p;
    /* exact fast path: at most 15 significant digits and a small power of ten, where
       one IEEE multiplication or division of two exact doubles rounds correctly */
    int neg = 0, digits = 0, exp10 = 0, exact = 1;
    uint64_t mant = 0;
    if (p < end && *p == '-') neg = 1, p++;
    if (p >= end) return SLOW;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (++digits > 15) exact = 0;
            else mant = mant * 10 + (uint64_t)(*p - '0');
        }
    } else {
        return SLOW;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return SLOW;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (mant || *p != '0') digits++;
            if (digits > 15) exact = 0;
            else mant = mant * 10 + (uint64_t)(*p - '0'), exp10--;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0, e = 0;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p == '-', p++;
        if (p >= end || *p < '0' || *p > '9') return SLOW;
        for (; p < end && *p >= '0' && *p <= '9'; p++)
            if (e <= 400) e = e * 10 + (*p - '0');
        if (e > 400) exact = 0;
        else exp10 += eneg ? -e : e;
    }
    s->p = p;
    size_t n = (size_t)(p - a);
    if (exact && mant == 0) {
        *out = neg ? -0.0 : 0.0;
        return OK;
    }
    if (exact && exp10 >= -22 && exp10 <= 22) {
        double d = (double)mant; /* exact: mant < 10^15 < 2^53 */
        d = exp10 < 0 ? d / POW10[-exp10] : d * POW10[exp10];
        *out = neg ? -d : d;
        return OK;
    }
    char tmp[128];
    if (n >= sizeof tmp) return SLOW;
    memcpy(tmp, a, n);
    tmp[n] = 0;
    *out = strtod(tmp, NULL); /* correctly rounded (glibc); the grammar is checked above */
    return OK;
}

/* A key: a plain string followed by ':'. */
HOT int key(Scan *s, const uint8_t **a, size_t *n) {
    if (plain_string(s, a, n)) return SLOW;
    ws(s);
    if (s->p >= s->end || *s->p != ':') return SLOW;
    s->p++;
    ws(s);
    return OK;
}

/* After a member: ',' (returns 1, more follow) or the closing '}' (returns 0). */
HOT int next_member(Scan *s, int *more) {
    ws(s);
    if (s->p >= s->end) return SLOW;
    if (*s->p == ',') {
        s->p++;
        ws(s);
        *more = 1;
        return OK;
    }
    if (*s->p == '}') {
        s->p++;
        *more = 0;
        return OK;
    }
    return SLOW;
}

/* Opens an object: '{' and whitespace; *more = 0 when it is empty. */
HOT int open_object(Scan *s, int *more) {
    if (s->p >= s->end || *s->p != '{') return SLOW;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        *more = 0;
    } else {
        *more = 1;
    }
    return OK;
}

/* The index of name [a, a + n) in names, or -1. Records written by one producer list
   their fields in one order, so the one after the last found (*hint) is tried first. */
static Py_ssize_t find_name(const Name *names, Py_ssize_t k, const uint8_t *a, size_t n,
                            Py_ssize_t *hint) {
    Py_ssize_t h = *hint < k ? *hint : 0;
    for (Py_ssize_t i = h, c = 0; c < k; c++, i = i + 1 < k ? i + 1 : 0) {
        if (names[i].len == n && same(names[i].name, a, n)) {
            *hint = i + 1;
            return i;
        }
    }
    return -1;
}

/* The member at s->p when its key is the name after the last one found (*hint) written
   as compact JSON, "name": with nothing between (one 8-byte compare): its index, the
   scan after the ':' and any whitespace; else -1 and the scan unmoved. */
static inline Py_ssize_t expected_key(Scan *s, const Name *names, Py_ssize_t k, Py_ssize_t *hint) {
    Py_ssize_t h = *hint < k ? *hint : 0;
    const Name *nm = &names[h];
    if (!nm->qlen || s->end - s->p < 8) return -1;
    uint64_t w;
    memcpy(&w, s->p, 8);
    if ((w ^ nm->pat) & nm->mask) return -1;
    s->p += nm->qlen;
    ws(s);
    *hint = h + 1;
    return h;
}

/* The value of an unknown feature name, skipped; counted (requests) unless null. */
static int unknown_value(Parser *P, Scan *s, const char *kind, const uint8_t *a, size_t n) {
    int null = s->p < s->end && *s->p == 'n';
    if (skip_value(s)) return SLOW;
    if (!P->unknown || null) return OK;
    size_t kn = strlen(kind);
    char *text = malloc(kn + 1 + n);
    if (!text) return FAIL;
    memcpy(text, kind, kn);
    text[kn] = '.';
    memcpy(text + kn + 1, a, n);
    PyObject *k = PyUnicode_DecodeUTF8(text, (Py_ssize_t)(kn + 1 + n), "strict");
    free(text);
    if (!k) return FAIL;
    PyObject *v = PyDict_GetItemWithError(P->unknown, k);
    long c = v ? PyLong_AsLong(v) : 0;
    PyObject *c1 = PyLong_FromLong(c + 1);
    int r = c1 ? PyDict_SetItem(P->unknown, k, c1) : -1;
    Py_DECREF(k);
    Py_XDECREF(c1);
    return r ? FAIL : OK;
}

/* A raw id: decimal int64, not one of the tables' two sentinels. */
static int raw_id(const uint8_t *a, size_t n, int64_t *out) {
    size_t i = n && a[0] == '-';
    if (n == i || n - i > 19) return SLOW;
    uint64_t v = 0;
    for (size_t j = i; j < n; j++) {
        if (a[j] < '0' || a[j] > '9') return SLOW;
        v = v * 10 + (uint64_t)(a[j] - '0');
    }
    if ((!i && v > (uint64_t)INT64_MAX) || (i && v > (uint64_t)INT64_MAX + 1)) return SLOW;
    int64_t x = i ? (int64_t)(0 - v) : (int64_t)v;
    if (x == INT64_MIN || x == INT64_MIN + 1) return SLOW;
    *out = x;
    return OK;
}

/* The list of strings of sparse field f, appended to its ids. */
HOT int sparse_list(Parser *P, Scan *s, Py_ssize_t f) {
    if (s->p >= s->end || *s->p != '[') return SLOW;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return OK;
    }
    for (;;) {
        const uint8_t *a;
        size_t n;
        int64_t id;
        if (plain_string(s, &a, &n)) return SLOW;
        if (P->raw[f]) {
            if (raw_id(a, n, &id)) return SLOW;
            if (buf_put8(&P->ids[f], &id)) return FAIL;
        } else {
            int r = pend(P, (uint32_t)f, a, n, s->end);
            if (r) return r;
        }
        ws(s);
        if (s->p >= s->end) return SLOW;
        if (*s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        if (*s->p != ']') return SLOW;
        s->p++;
        return OK;
    }
}

/* A features object {"sparse": {...}, "dense": {...}}: ids appended, row filled. */
static int features(Parser *P, Scan *scan) {
    /* the scan in registers: its address is taken only by a copy (u) for the cold calls,
       so the stores into the output buffers (bytes, which may alias anything) do not
       make the compiler reload and store it around each one */
    Scan t = *scan, u, *s = &t;
    int more, r, have_sparse = 0, have_dense = 0;
    memset(P->seen, 0, (size_t)(P->n_sparse + P->n_dense) * sizeof(uint32_t));
    for (Py_ssize_t j = 0; j < P->n_dense; j++) P->row[j] = 0.0f;
    if ((r = open_object(s, &more))) return r;
    while (more) {
        const uint8_t *a;
        size_t n;
        if (key(s, &a, &n)) return SLOW;
        int is_sparse = n == 6 && !memcmp(a, "sparse", 6);
        int is_dense = n == 5 && !memcmp(a, "dense", 5);
        if (is_sparse || is_dense) {
            if (is_sparse ? have_sparse++ : have_dense++) return SLOW; /* duplicate key */
            int inner;
            if (open_object(s, &inner)) return SLOW; /* null or another type: Arrow */
            while (inner) {
                const uint8_t *b;
                size_t m;
                if (is_sparse) {
                    Py_ssize_t f = expected_key(s, P->sparse, P->n_sparse, &P->hint_sparse);
                    if (f < 0) {
                        if (key(s, &b, &m)) return SLOW;
                        f = find_name(P->sparse, P->n_sparse, b, m, &P->hint_sparse);
                    }
                    if (f < 0) {
                        u = t;
                        if ((r = unknown_value(P, &u, "sparse", b, m))) return r;
                        t = u;
                    } else {
                        if (P->seen[f]++) return SLOW;
                        if ((r = sparse_list(P, s, f))) return r;
                    }
                } else {
                    Py_ssize_t j = expected_key(s, P->dense, P->n_dense, &P->hint_dense);
                    if (j < 0) {
                        if (key(s, &b, &m)) return SLOW;
                        j = find_name(P->dense, P->n_dense, b, m, &P->hint_dense);
                    }
                    if (j < 0) {
                        u = t;
                        if ((r = unknown_value(P, &u, "dense", b, m))) return r;
                        t = u;
                    } else {
                        double d;
                        if (P->seen[P->n_sparse + j]++) return SLOW;
                        if (double_value(s, &d)) return SLOW;
                        float x = (float)d;
                        if (!isfinite(x)) return SLOW;
                        P->row[j] = x;
                    }
                }
                if (next_member(s, &inner)) return SLOW;
            }
        } else {
            u = t;
            if (skip_value(&u)) return SLOW;
            t = u;
        }
        if (next_member(s, &more)) return SLOW;
    }
    *scan = t;
    return OK;
}

/* Per-call output state */

static void reset_out(Parser *P) {
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        P->ids[f].len = 0;
        P->offsets[f].len = 0;
        int64_t zero = 0;
        buf_put(&P->offsets[f], &zero, 8); /* 256 bytes reserved: cannot fail after the first */
    }
    P->dense_out.len = P->label_out.len = P->time_out.len = P->fake_out.len = P->ok_out.len = 0;
    P->sids.len = 0;
    P->pend.len = 0;
    P->miss->n = P->miss->distinct = 0;
}

/* Commit the current record: offsets and the dense row. */
static int commit(Parser *P) {
    resolve(P);
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        int64_t end = (int64_t)(P->ids[f].len / 8);
        if (buf_put8(&P->offsets[f], &end)) return FAIL;
    }
    return buf_put(&P->dense_out, P->row, (size_t)P->n_dense * 4) ? FAIL : OK;
}

static void rollback(Parser *P) { /* drop the ids of a record that was not committed */
    P->pend.len = 0;
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        int64_t end;
        memcpy(&end, P->offsets[f].data + P->offsets[f].len - 8, 8);
        P->ids[f].len = (size_t)end * 8;
    }
}

static const uint8_t SID_PREFIX[] = "sample_id\x1f";

/* One Sample value: committed with its label, time, fake flag and id checksum. */
static int sample(Parser *P, const uint8_t *p, size_t len) {
    Scan s = {p, p + len, 0};
    int more, r;
    enum { V = 1, SID = 2, TIME = 4, FEAT = 8, LABELS = 16, STRAT = 32, CORR = 64 };
    int seen = 0, label = -1, fake = 0, correction = 0;
    int64_t t = 0;
    const uint8_t *sid = NULL;
    size_t sid_n = 0;
    ws(&s);
    if ((r = open_object(&s, &more))) return r;
    while (more) {
        const uint8_t *a;
        size_t n;
        int bit = 0;
        if (key(&s, &a, &n)) return SLOW;
#define IS(lit) (n == sizeof(lit) - 1 && !memcmp(a, lit, n))
        if (IS("v")) bit = V;
        else if (IS("sample_id")) bit = SID;
        else if (IS("event_time_ms")) bit = TIME;
        else if (IS("features")) bit = FEAT;
        else if (IS("labels")) bit = LABELS;
        else if (IS("strategy")) bit = STRAT;
        else if (IS("correction")) bit = CORR;
        if (bit & seen) return SLOW; /* a duplicate key */
        seen |= bit;
        switch (bit) {
        case V: {
            int64_t v;
            if (int64_value(&s, &v) || v != 1) return SLOW;
            break;
        }
        case SID:
            if (plain_string(&s, &sid, &sid_n)) return SLOW;
            break;
        case TIME:
            if (int64_value(&s, &t)) return SLOW;
            break;
        case FEAT:
            if ((r = features(P, &s))) return r;
            break;
        case LABELS: {
            int inner;
            if (open_object(&s, &inner)) return SLOW;
            while (inner) {
                const uint8_t *b;
                size_t m;
                if (key(&s, &b, &m)) return SLOW;
                if (m == P->label.len && !memcmp(b, P->label.name, m)) {
                    int64_t y;
                    if (label != -1 || int64_value(&s, &y) || (y != 0 && y != 1)) return SLOW;
                    label = (int)y;
                } else if (skip_value(&s)) {
                    return SLOW;
                }
                if (next_member(&s, &inner)) return SLOW;
            }
            break;
        }
        case STRAT: {
            const uint8_t *b;
            size_t m;
            if (plain_string(&s, &b, &m)) return SLOW;
            if (m == 13 && !memcmp(b, "fake_negative", 13)) fake = 1;
            else if (!(m == 6 && !memcmp(b, "window", 6))) return SLOW;
            break;
        }
        case CORR:
            if (s.p < s.end && *s.p == 't') {
                if (literal(&s, "true")) return SLOW;
                correction = 1;
            } else if (literal(&s, "false")) {
                return SLOW;
            }
            break;
        default:
            if (skip_value(&s)) return SLOW;
        }
#undef IS
        if (next_member(&s, &more)) return SLOW;
    }
    ws(&s);
    if (s.p != s.end) return SLOW; /* more than one document */
    if ((seen & (V | SID | TIME | FEAT | LABELS | STRAT)) != (V | SID | TIME | FEAT | LABELS | STRAT))
        return SLOW;
    if (label < 0 || (correction && label != 1)) return SLOW; /* absent, or skipped */
    float y = (float)label;
    uint8_t fk = (uint8_t)fake;
    if (buf_put(&P->label_out, &y, 4) || buf_put(&P->time_out, &t, 8) ||
        buf_put(&P->fake_out, &fk, 1) || commit(P))
        return FAIL;
    Span id = {sid, sid_n};
    return buf_put(&P->sids, &id, sizeof id) ? FAIL : OK;
}

/* Per sparse field: 1 where every record has exactly one value (offsets 0, 1, ..., m),
   the common case that needs no pooling. */
static PyObject *one_each(Parser *P) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, P->n_sparse);
    if (!out) return NULL;
    char *flags = PyBytes_AS_STRING(out);
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        const int64_t *o = (const int64_t *)P->offsets[f].data;
        size_t m = P->offsets[f].len / 8;
        int one = 1;
        for (size_t i = 0; i < m && one; i++) one = o[i] == (int64_t)i;
        flags[f] = (char)one;
    }
    return out;
}

static PyObject *buf_list(Buf *bufs, Py_ssize_t k) {
    PyObject *out = PyList_New(k);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *b = buf_take(&bufs[i]);
        if (!b) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, b);
    }
    return out;
}

/* The parser's state is one call's: a call takes the parser's lock, and waits for it
   only with the GIL released (so a thread holding the lock can always get the GIL) */
static void lock_parser(Parser *P) {
    if (!PyThread_acquire_lock(P->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(P->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

/* The values are parsed with the GIL released (a daemon featurizes the next batch on a
   thread while this one trains); each is held by a reference taken before. */
static PyObject *Parser_samples(Parser *P, PyObject *values) {
    if (!P->lock) return PyErr_Format(PyExc_RuntimeError, "Parser not initialised");
    PyObject *seq = PySequence_Fast(values, "values must be a sequence of bytes");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **held = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(PyObject *));
    Span *spans = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Span));
    if (!held || !spans) {
        PyMem_Free(held);
        PyMem_Free(spans);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(v);
        held[i] = v;
        spans[i] = PyBytes_Check(v) ? (Span){(const uint8_t *)PyBytes_AS_STRING(v),
                                             (size_t)PyBytes_GET_SIZE(v)}
                                    : (Span){NULL, 0}; /* not bytes: the Arrow path's */
    }
    Py_DECREF(seq);
    lock_parser(P);
    int failed = 0;
    uint64_t x = 0; /* xor_ids of the committed records' sample ids */
    Py_BEGIN_ALLOW_THREADS
    reset_out(P);
    P->unknown = NULL;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        uint8_t ok = 0;
        if (spans[i].p) {
            int r = sample(P, spans[i].p, spans[i].len);
            if (r == FAIL) failed = 1;
            if (r == SLOW) rollback(P);
            ok = r == OK;
        }
        if (buf_put(&P->ok_out, &ok, 1)) failed = 1;
    }
    if (!failed) flush(P);
    x = failed ? 0
             : xor_ids(SID_PREFIX, sizeof SID_PREFIX - 1, (const Span *)P->sids.data,
                       P->sids.len / sizeof(Span));
    Py_END_ALLOW_THREADS
    PyObject *out = failed ? PyErr_NoMemory()
                           : Py_BuildValue("(NNNNNNNKN)", buf_take(&P->ok_out),
                                           buf_list(P->ids, P->n_sparse),
                                           buf_list(P->offsets, P->n_sparse),
                                           buf_take(&P->dense_out), buf_take(&P->label_out),
                                           buf_take(&P->time_out), buf_take(&P->fake_out),
                                           (unsigned long long)x, one_each(P));
    PyThread_release_lock(P->lock);
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(spans);
    return out;
}

/* A request body: {"features": F} | {"instances": [F, ...]} | {"impressions": [{"features": F, ...}, ...]} */
static int request(Parser *P, const uint8_t *p, size_t len, Py_ssize_t max, int *single, Py_ssize_t *m) {
    Scan s = {p, p + len, 0};
    int more, r, shapes = 0;
    ws(&s);
    if ((r = open_object(&s, &more))) return r;
    *m = 0;
    while (more) {
        const uint8_t *a;
        size_t n;
        if (key(&s, &a, &n)) return SLOW;
        int feat = n == 8 && !memcmp(a, "features", 8);
        int inst = n == 9 && !memcmp(a, "instances", 9);
        int imps = n == 11 && !memcmp(a, "impressions", 11);
        if (feat || inst || imps) {
            if (shapes++) return SLOW; /* more than one shape, or a key twice: Arrow */
            *single = feat;
            if (feat) {
                if ((r = features(P, &s)) || (r = commit(P))) return r;
                *m = 1;
            } else {
                if (s.p >= s.end || *s.p != '[') return SLOW;
                s.p++;
                ws(&s);
                int items = !(s.p < s.end && *s.p == ']');
                if (!items) s.p++;
                while (items) {
                    if (++*m > max) return SLOW;
                    if (inst) {
                        if ((r = features(P, &s))) return r;
                    } else { /* an impression: its "features", other keys skipped */
                        int im, got = 0;
                        if (open_object(&s, &im)) return SLOW;
                        while (im) {
                            const uint8_t *b;
                            size_t k;
                            if (key(&s, &b, &k)) return SLOW;
                            if (k == 8 && !memcmp(b, "features", 8)) {
                                if (got++ || (r = features(P, &s))) return r ? r : SLOW;
                            } else if (skip_value(&s)) {
                                return SLOW;
                            }
                            if (next_member(&s, &im)) return SLOW;
                        }
                        if (!got) return SLOW;
                    }
                    if ((r = commit(P))) return r;
                    ws(&s);
                    if (s.p >= s.end) return SLOW;
                    if (*s.p == ',') {
                        s.p++;
                        ws(&s);
                    } else if (*s.p == ']') {
                        s.p++;
                        items = 0;
                    } else {
                        return SLOW;
                    }
                }
            }
        } else if (skip_value(&s)) {
            return SLOW;
        }
        if (next_member(&s, &more)) return SLOW;
    }
    ws(&s);
    if (s.p != s.end || shapes != 1) return SLOW;
    flush(P);
    return OK;
}

static PyObject *Parser_request(Parser *P, PyObject *args) {
    Py_buffer body;
    Py_ssize_t max;
    if (!P->lock) return PyErr_Format(PyExc_RuntimeError, "Parser not initialised");
    if (!PyArg_ParseTuple(args, "y*n", &body, &max)) return NULL;
    lock_parser(P);
    reset_out(P);
    P->unknown = PyDict_New();
    if (!P->unknown) {
        PyThread_release_lock(P->lock);
        PyBuffer_Release(&body);
        return NULL;
    }
    int single = 0;
    Py_ssize_t m = 0;
    int r = request(P, (const uint8_t *)body.buf, (size_t)body.len, max, &single, &m);
    PyBuffer_Release(&body);
    PyObject *unknown = P->unknown, *out;
    P->unknown = NULL;
    if (r == OK) {
        out = Py_BuildValue("(OnNNNON)", single ? Py_True : Py_False, m,
                            buf_list(P->ids, P->n_sparse), buf_list(P->offsets, P->n_sparse),
                            buf_take(&P->dense_out), unknown, one_each(P));
    } else if (r == SLOW) {
        out = Py_NewRef(Py_None);
    } else {
        out = PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    PyThread_release_lock(P->lock);
    Py_DECREF(unknown);
    return out;
}

/* ------------------------------------------------------------------ type plumbing */

static int names_of(PyObject *list, Name **out, Py_ssize_t *k) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "names must be a list of bytes");
        return -1;
    }
    *k = PyList_GET_SIZE(list);
    *out = calloc((size_t)(*k ? *k : 1), sizeof(Name));
    if (!*out) return -1;
    for (Py_ssize_t i = 0; i < *k; i++) {
        PyObject *b = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "names must be a list of bytes");
            return -1;
        }
        Name *nm = &(*out)[i];
        *nm = (Name){(const uint8_t *)PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b), 0, 0, 0};
        int plain = nm->len + 3 <= 8;
        for (size_t j = 0; j < nm->len && plain; j++)
            plain = nm->name[j] >= 0x20 && nm->name[j] < 0x80 && nm->name[j] != '"' &&
                    nm->name[j] != '\\';
        if (plain) {
            uint8_t q[8] = {0};
            q[0] = '"';
            memcpy(q + 1, nm->name, nm->len);
            q[nm->len + 1] = '"';
            q[nm->len + 2] = ':';
            nm->qlen = nm->len + 3;
            memcpy(&nm->pat, q, 8);
            nm->mask = nm->qlen == 8 ? ~0ULL : (1ULL << (8 * nm->qlen)) - 1;
        }
    }
    return 0;
}

static int Parser_init(Parser *P, PyObject *args, PyObject *kw) {
    PyObject *sparse, *raw, *dense, *label;
    Py_ssize_t cache_size;
    if (!PyArg_ParseTuple(args, "O!O!O!O!n", &PyList_Type, &sparse, &PyList_Type, &raw,
                          &PyList_Type, &dense, &PyBytes_Type, &label, &cache_size))
        return -1;
    if (P->names) {
        PyErr_SetString(PyExc_RuntimeError, "Parser is initialised once");
        return -1;
    }
    P->names = Py_BuildValue("(OOO)", sparse, dense, label);
    if (!P->names) return -1;
    if (names_of(sparse, &P->sparse, &P->n_sparse) || names_of(dense, &P->dense, &P->n_dense))
        return -1;
    if (PyList_GET_SIZE(raw) != P->n_sparse) {
        PyErr_SetString(PyExc_ValueError, "one raw flag per sparse field");
        return -1;
    }
    P->label = (Name){(const uint8_t *)PyBytes_AS_STRING(label), (size_t)PyBytes_GET_SIZE(label)};
    Py_ssize_t k = P->n_sparse ? P->n_sparse : 1;
    P->raw = calloc((size_t)k, 1);
    P->prefix = calloc((size_t)k, sizeof(uint8_t *));
    P->ids = calloc((size_t)k, sizeof(Buf));
    P->offsets = calloc((size_t)k, sizeof(Buf));
    P->seen = calloc((size_t)(P->n_sparse + P->n_dense + 1), sizeof(uint32_t));
    P->row = calloc((size_t)(P->n_dense + 1), sizeof(float));
    P->miss = calloc(1, sizeof(struct Misses));
    P->cache.fields = calloc((size_t)k, sizeof(ShortTable));
    P->cache.n_fields = P->n_sparse;
    if (!P->cache.fields || !P->raw || !P->prefix || !P->ids || !P->offsets || !P->seen || !P->row || !P->miss) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        P->raw[f] = (char)PyObject_IsTrue(PyList_GET_ITEM(raw, f));
        P->prefix[f] = malloc(P->sparse[f].len + 1);
        if (!P->prefix[f]) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(P->prefix[f], P->sparse[f].name, P->sparse[f].len);
        P->prefix[f][P->sparse[f].len] = 0x1f;
    }
    P->cache.limit = cache_size > 0 ? (size_t)cache_size : 1;
    P->lock = PyThread_allocate_lock();
    if (!P->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Parser_dealloc(Parser *P) {
    for (Py_ssize_t f = 0; f < P->n_sparse; f++) {
        if (P->prefix) free(P->prefix[f]);
        if (P->ids) free(P->ids[f].data);
        if (P->offsets) free(P->offsets[f].data);
    }
    free(P->prefix);
    free(P->ids);
    free(P->offsets);
    free(P->raw);
    free(P->seen);
    free(P->row);
    free(P->sparse);
    free(P->dense);
    free(P->dense_out.data);
    free(P->label_out.data);
    free(P->time_out.data);
    free(P->fake_out.data);
    free(P->ok_out.data);
    free(P->pend.data);
    free(P->sids.data);
    free(P->miss);
    slots_free(P->cache.slots, P->cache.mapped);
    for (Py_ssize_t f = 0; P->cache.fields && f < P->cache.n_fields; f++)
        slots_free(P->cache.fields[f].slots, P->cache.fields[f].mapped);
    free(P->cache.fields);
    free(P->cache.arena.data);
    Py_XDECREF(P->names);
    if (P->lock) PyThread_free_lock(P->lock);
    Py_TYPE(P)->tp_free((PyObject *)P);
}

static PyObject *Parser_cached(Parser *P, PyObject *unused) {
    return PyLong_FromSize_t(P->cache.count);
}

static PyObject *py_stable_hash(PyObject *self, PyObject *args) {
    Py_buffer prefix, data;
    if (!PyArg_ParseTuple(args, "y*y*", &prefix, &data)) return NULL;
    int64_t id = b2_id(prefix.buf, (size_t)prefix.len, data.buf, (size_t)data.len);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&data);
    return PyLong_FromLongLong(id);
}

static PyMethodDef Parser_methods[] = {
    {"samples", (PyCFunction)Parser_samples, METH_O, "Featurize raw Sample values (module doc)."},
    {"request", (PyCFunction)Parser_request, METH_VARARGS, "Featurize a request body, or None."},
    {"cached", (PyCFunction)Parser_cached, METH_NOARGS, "Values in the cache."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ParserType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "featurize._fast.Parser",
    .tp_basicsize = sizeof(Parser),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Parser(sparse_names, raw_flags, dense_names, label, cache_size)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Parser_init,
    .tp_dealloc = (destructor)Parser_dealloc,
    .tp_methods = Parser_methods,
};

static PyMethodDef module_methods[] = {
    {"blake2b64", py_stable_hash, METH_VARARGS,
     "blake2b64(prefix, data) -> the int64 of blake2b(prefix + data, digest_size=8)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "featurize._fast",
                                    "The C fast path of featurize.core (see _fast.c).", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&ParserType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ParserType);
    if (PyModule_AddObject(m, "Parser", (PyObject *)&ParserType) < 0) {
        Py_DECREF(&ParserType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
