// SPDX-License-Identifier: GPL-2.0-only
/*
 * cgdrop's BPF programs: verdicts on the packets, connect() and unconnected
 * sendmsg() calls of the sockets of one cgroup (and its descendants), with
 * per-CPU counters.
 *
 * Verdict order (../shared/DESIGN.md, "Policy semantics"):
 *   1. direction not selected → pass
 *   2. interface filter set and not this interface → pass
 *   3. port filter set and neither port of a TCP/UDP packet equals it → pass
 *   4. the rule for the remote address and port (longest prefix; one with a
 *      port beats one without): allow → pass, deny → drop
 *   5. no rule: drop, unless the policy has deny rules (then it is a block list)
 *   6. dry-run: counted as above, but always pass
 */
/*
 * Two objects are built from this file (build.rs). The policy object reads
 * only UAPI contexts (__sk_buff, bpf_sock_addr, bpf_sock) and wire headers,
 * whose layouts never change: compiled without CO-RE relocations, libbpf
 * never reads the kernel's BTF to load it (5.5 MB parsed and searched, ~13 ms
 * of every start). The sockets object (CGDROP_SOCKETS) adds the socket
 * iterators, which read kernel structs and so need CO-RE.
 */
#ifndef CGDROP_SOCKETS
#define BPF_NO_PRESERVE_ACCESS_INDEX
#endif
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "cgdrop.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
/* IPv4 fragment offset bits: non-zero means a non-first fragment (no L4 header). */
#define IP_OFFSET_MASK 0x1fff
/* IPv6 extension headers that are walked to find the L4 header. */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define NEXTHDR_AUTH 51
/* Routing header types that name further destinations: 0 (deprecated), 2 (mobile IPv6), 4 (segment routing). */
#define IPV6_SRCRT_TYPE_0 0
#define IPV6_SRCRT_TYPE_2 2
#define IPV6_SRCRT_TYPE_4 4
/* Transport protocols whose header starts with the source and destination ports. */
#define PROTO_DCCP 33
#define PROTO_SCTP 132
#define PROTO_UDPLITE 136
/* Extension headers walked at most; a packet with more has no ports for us. */
#define MAX_IPV6_EXT 4
/* Expired rules looked past per lookup before giving up (userspace deletes them). */
#define MAX_EXPIRED_SKIPS 4
/* The configuration of this load (see struct cgdrop_config). */
const volatile struct cgdrop_config cfg = {};

/*
 * What happens to traffic no rule matches: 0 = dropped (the policy has no
 * deny rule: everything in scope, or all but the allowed), 1 = passed (a
 * block list). Not rodata: a rules-file reload can change it, together with
 * the rules.
 */
__u32 unmatched_pass = 0;
/*
 * Set by userspace, never lower than the tries need: whether they may hold
 * any rule, and any rule with a port. The lookups (and, without a port
 * filter, the packet parsing) are skipped when they cannot match.
 */
__u32 has_rules = 0;
__u32 has_port_rules = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CGDROP_STAT_SLOTS);
	__type(key, __u32);
	__type(value, struct cgdrop_stat_cpu);
} cgdrop_stats SEC(".maps");

_Static_assert(sizeof(((struct cgdrop_stat_cpu *)0)->level) / sizeof(struct cgdrop_counters) == CGDROP_LEVELS,
	       "struct cgdrop_stat_cpu has CGDROP_LEVELS levels");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CGDROP_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cgdrop_key_v4);
	__type(value, struct cgdrop_rule);
} cgdrop_rules_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CGDROP_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cgdrop_key_v6);
	__type(value, struct cgdrop_rule);
} cgdrop_rules_v6 SEC(".maps");

/*
 * See enum cgdrop_sieve: which address groups a rule may cover. One value
 * (one lookup per check, then read in place), written by userspace through
 * mmap. Not a `.bss.*` section, which would read the same with no lookup:
 * the libbpf of Debian's bpftool (1.1) cannot open an object that has one.
 */
struct cgdrop_sieve_words {
	/* One spare word: the verifier's bound on an index ignores its alignment. */
	__u64 w[CGDROP_SIEVE_WORDS + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cgdrop_sieve_words);
} cgdrop_sieve SEC(".maps");

/* See struct cgdrop_host. Sized by the loader (cfg.hosts_v4 entries; 1 without a table). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cgdrop_host);
} cgdrop_hosts_v4 SEC(".maps");

/* See struct cgdrop_info: bookkeeping for pinned policies. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgdrop_info);
} cgdrop_info SEC(".maps");

/*
 * Per-rule hit counters, per CPU and nesting level (exact without locked
 * instructions, as `stats`), keyed by the rule's hit_key, created on a
 * rule's first hit; userspace deletes a rule's entry with the rule. Sized
 * by the loader (a hash's buckets are allocated when it is made: 2M of
 * them cost ~25 ms at every start).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2 * CGDROP_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct cgdrop_hits);
} cgdrop_hits SEC(".maps");

/* Drop and reject events for `cgdrop log`, `--log` and `--log-json`. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} cgdrop_events SEC(".maps");

/* Where an event is put together (the BPF stack is too small for it). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgdrop_event);
} cgdrop_scratch SEC(".maps");

/* Each CPU's event budget for the current second (see event_start). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgdrop_budget);
} cgdrop_budget SEC(".maps");

/*
 * Who uses a socket: recorded by the sock_create hook (the creator) and the
 * connect/sendmsg hooks (the caller, which may be another process the socket
 * was passed to), all of which run in the process's context, and read back by
 * the skb hooks, which often run in softirq context where the current task is
 * not the socket's owner. No BPF_F_CLONE: a socket accepted from a listener
 * would inherit the listener's creator, which for a pre-forking server is not
 * the process that accepted it, so accepted sockets stay "unknown".
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cgdrop_owner);
} cgdrop_owners SEC(".maps");

/*
 * Non-zero while `--kill-existing` closes sockets: the egress program then
 * lets out the reset of a socket cgdrop marked CGDROP_OWNER_CLOSING (the
 * peer learns the connection is gone). Zero otherwise: the drop path then
 * costs one array lookup more.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cgdrop_killing SEC(".maps");

/* What the verdict needs to know of a packet. Ports are in host order. */
struct pkt_info {
	/* The remote address (egress: destination; ingress: source); IPv4 uses 4 bytes. Read as words. */
	__u8 addr[16] __attribute__((aligned(4)));
	/* The final destination of an IPv6 routing header. */
	__u8 final_addr[16] __attribute__((aligned(4)));
	__u16 sport;
	__u16 dport;
	/* 4, 6, or 0 when the IP header could not be read. */
	__u8 family;
	/* Egress IPv6 with a routing header: the final destination is judged too. */
	__u8 has_final;
	/* The header chain could not be walked to its end: the verdict cannot be decided. */
	__u8 undecided;
	__u8 has_ports;
	/* A value the verifier must forget (see forget_in). */
	__u32 scratch;
	/* Where the ports are (the transport header), and its protocol (set with has_ports). */
	__u16 l4_off;
	__u8 proto;
};

/* Per nesting level: the packet the level's last judge() parsed (for its event). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CGDROP_LEVELS);
	__type(key, __u32);
	__type(value, struct pkt_info);
} cgdrop_pkt SEC(".maps");

/* Whether a port (host order) is in the policy's --port range; false with no range. */
static __always_inline bool in_port_range(__u16 port)
{
	return port >= cfg.port && port <= cfg.port_hi;
}

/*
 * Where one run of a hook counts: its slot of `stats` on this CPU, and the
 * nesting level it took (see struct cgdrop_stat_cpu).
 */
struct counting {
	struct cgdrop_stat_cpu *s;
	__u32 depth;
	__u32 level;
	/*
	 * 1 when this run's level may be shared (the kernel preempts tasks
	 * inside programs, or the nesting went past the last level): then its
	 * adds are atomic. Tested once, by count_run() at the end of the run.
	 */
	__u32 shared;
};

/*
 * Takes the next nesting level of `slot` on this CPU (leave() gives it
 * back). A run that interrupts this one between the read and the write of
 * `depth` ends, and puts `depth` back, before this one goes on: both then
 * take the same level, one after the other, never at once. Beyond the last
 * level (never seen: cgroup programs run in task or softirq context) the
 * last level is shared with atomic adds.
 *
 * The last level and `shared` are worked out without a compare: a compare
 * would split the verifier's walk in two (the last level, a constant, and
 * the others), and the whole verdict after it was verified twice.
 */
static __always_inline void enter(struct counting *k, __u32 slot)
{
	__u64 depth, over;

	k->s = bpf_map_lookup_elem(&cgdrop_stats, &slot);
	if (!k->s)
		return;
	depth = k->s->depth;
	k->s->depth = depth + 1;
	/* depth >= CGDROP_LEVELS - 1, as 0 or 1 (depth < 2^32: no overflow). */
	over = (depth + ((1ULL << 63) - (CGDROP_LEVELS - 1))) >> 63;
	/* Keeps clang from turning it back into a compare. */
	barrier_var(over);
	k->depth = depth;
	/* over ? CGDROP_LEVELS - 1 : depth */
	k->level = depth - ((depth - (CGDROP_LEVELS - 1)) & -over);
	k->shared = cfg.count_atomic ? 1 : over;
}

static __always_inline void leave(struct counting *k)
{
	if (k->s)
		k->s->depth = k->depth;
}

/* The counters of this run (NULL if the map lookup failed, which it cannot for an array). */
static __always_inline struct cgdrop_counters *counters(struct counting *k)
{
	if (!k->s)
		return NULL;
	/* Bounded for the verifier; enter() keeps it so. */
	return &k->s->level[k->level & (CGDROP_LEVELS - 1)];
}

/*
 * Counts a run at its level: `n` packets (or calls) and, with `bytes`,
 * their `len` bytes; the same as dropped when `dropped`. Plain adds, unless
 * the level may be shared. At the end of the run, with one test of
 * `shared`: each test of it splits the verifier's walk, and once it is
 * known, every later test keeps the two walks apart to the end.
 */
static __always_inline void count_run(struct counting *k, __u64 n, __u64 len, bool bytes, bool dropped)
{
	struct cgdrop_counters *c = counters(k);

	if (!c)
		return;
	if (k->shared) {
		__sync_fetch_and_add(&c->packets, n);
		if (bytes)
			__sync_fetch_and_add(&c->bytes, len);
		if (dropped) {
			__sync_fetch_and_add(&c->dropped_packets, n);
			if (bytes)
				__sync_fetch_and_add(&c->dropped_bytes, len);
		}
	} else {
		c->packets += n;
		if (bytes)
			c->bytes += len;
		if (dropped) {
			c->dropped_packets += n;
			if (bytes)
				c->dropped_bytes += len;
		}
	}
}

/*
 * `v`, as a value the verifier does not know. The verdict's many paths end
 * in a few constants (an answer, whether a rule decided, ...), and a
 * constant that is tested is made precise: the verifier then walked what
 * follows (events, counting, the hit) once for each of them. Read back from
 * memory it does not track, it is unknown, and the paths are one from
 * there. Volatile: clang would see through it.
 *
 * forget_in() goes through the run's level of a per-CPU map (as the rest
 * of the run's scratch): only a run at the same level on this CPU could
 * write it in between, which the levels rule out (struct cgdrop_stat_cpu).
 * forget() goes through two stack slots that both hold `v`, one chosen by
 * `any` (any value; a read at a variable offset is unknown to the
 * verifier): for the connect and sendmsg programs, which have no scratch
 * of their own (a map's would cost a lookup). Not for the skb programs:
 * there it merged less (the read makes its index precise: ingress walked
 * 4,197 instructions against 3,775 through the scratch).
 */
static __always_inline __u32 forget_in(volatile __u32 *slot, __u32 v)
{
	*slot = v;
	return *slot;
}

static __always_inline __u32 forget(__u32 v, __u32 any)
{
	volatile __u32 slots[2];

	slots[0] = v;
	slots[1] = v;
	return slots[any & 1];
}

/*
 * The rule the last lookup of a program run found, for its hit count and its
 * event: one per nesting level (struct counting), so that a run interrupting
 * another on this CPU never overwrites the other's.
 */
struct rule_match {
	__u64 expires_ns;
	__u64 hit_key;
	/* enum cgdrop_action; 0 = no rule. */
	__u32 action;
	/* The rule's key prefixlen (port bits included). */
	__u32 prefixlen;
	__u16 port;
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CGDROP_LEVELS);
	__type(key, __u32);
	__type(value, struct rule_match);
} cgdrop_match SEC(".maps");

/* How a run came to its verdict. */
struct decision {
	/* The run's nesting level: its rule_match. */
	__u32 level;
	/* enum cgdrop_reason */
	__u8 reason;
	/* A live rule decided: the level's rule_match is it (its hit is counted). */
	__u8 found;
	/* Counted as dropped (or, for connect and sendmsg, rejected); dry-run: would be. */
	__u8 dropped;
};

/* A matching rule that has not expired: its action; otherwise 0. */
static __always_inline __u32 live_action(struct cgdrop_rule *r)
{
	if (!r->expires_ns)
		return r->action;
	return r->expires_ns > bpf_ktime_get_boot_ns() ? r->action : 0;
}

/*
 * Writes down the rule that decided, in the level's rule_match, and returns
 * its action. Only a found rule is written: the pass path of a miss touches
 * no scratch.
 */
static __always_inline __u32 found_rule(struct cgdrop_rule *r, __u32 action, __u16 port, __u32 level)
{
	struct rule_match *m;

	level &= CGDROP_LEVELS - 1;
	m = bpf_map_lookup_elem(&cgdrop_match, &level);
	if (m) {
		m->prefixlen = r->prefixlen;
		m->expires_ns = r->expires_ns;
		m->hit_key = r->hit_key;
		m->action = action;
		m->port = port;
	}
	return action;
}

/* lookup_live's answer when it looked past MAX_EXPIRED_SKIPS expired rules and could not decide. */
#define UNDECIDED 0xff

/*
 * The action of the longest live rule for `key` in the trie `map`, or 0. An
 * expired rule hides shorter ones in an LPM trie: look again with a prefix
 * one bit shorter than the expired one. After MAX_EXPIRED_SKIPS expired rules
 * the answer is UNDECIDED, which the verdict treats as a drop: an expired
 * rule must never change the verdict of a live one, and userspace deletes
 * expired rules (promptly in foreground, whenever a command touches a pin).
 * `prefixlen` points into `key`.
 */
static __always_inline __u32 lookup_live(void *map, void *key, __u32 *prefixlen, __u16 port, __u32 level)
{
	struct cgdrop_rule *r;
	__u32 action;

	for (int i = 0; i < MAX_EXPIRED_SKIPS; i++) {
		r = bpf_map_lookup_elem(map, key);
		if (!r)
			return 0;
		action = live_action(r);
		if (action)
			return found_rule(r, action, port, level);
		if (r->prefixlen <= CGDROP_PORT_BITS)
			return 0;
		*prefixlen = r->prefixlen - 1;
	}
	return UNDECIDED;
}

/* lookup_fast's answer for a rule with a ttl: lookup_live decides (rules_v4_ttl). */
#define HAS_TTL 0xfe

/*
 * The common case of lookup_live, inlined: the longest rule for `key` has no
 * ttl (its action), or there is none (0). A rule with a ttl, expired or not,
 * is HAS_TTL: the caller asks lookup_live, in a global function (see
 * final_drops), so that its loop is verified once and not in every path.
 */
static __always_inline __u32 lookup_fast(void *map, void *key, __u16 port, __u32 level)
{
	struct cgdrop_rule *r = bpf_map_lookup_elem(map, key);

	if (!r)
		return 0;
	if (r->expires_ns)
		return HAS_TTL;
	return found_rule(r, r->action, port, level);
}

/*
 * lookup_live for one port (0 = the rules without one) of an address, as
 * global functions taking words: `port_level` is port | nesting level << 16.
 */
__noinline __u32 rules_v4_ttl(__u32 addr, __u32 port_level)
{
	__u16 port = port_level & 0xffff;
	struct cgdrop_key_v4 key = { .prefixlen = CGDROP_PORT_BITS + 32, .port = bpf_htons(port) };

	__builtin_memcpy(key.addr, &addr, 4);
	return lookup_live(&cgdrop_rules_v4, &key, &key.prefixlen, port, port_level >> 16);
}

__noinline __u32 rules_v6_ttl(__u32 a0, __u32 a1, __u32 a2, __u32 a3, __u32 port_level)
{
	__u16 port = port_level & 0xffff;
	struct cgdrop_key_v6 key = { .prefixlen = CGDROP_PORT_BITS + 128, .port = bpf_htons(port) };
	__u32 a[4] = { a0, a1, a2, a3 };

	__builtin_memcpy(key.addr, a, 16);
	return lookup_live(&cgdrop_rules_v6, &key, &key.prefixlen, port, port_level >> 16);
}

/*
 * The entry of the host table for an IPv4 address (network order), plus 1;
 * 0 = none. A global function: its loop of CGDROP_HOST_STEPS halvings is
 * verified once per program, not in every path that judges an address, and
 * only policies with a table (cfg.hosts_v4) call it.
 */
__noinline __u32 host_index_v4(__u32 addr)
{
	__u32 a = bpf_ntohl(addr), lo = 0, hi = cfg.hosts_v4, mid;
	struct cgdrop_host *h;

	for (int i = 0; i < CGDROP_HOST_STEPS && lo < hi; i++) {
		mid = lo + (hi - lo) / 2;
		h = bpf_map_lookup_elem(&cgdrop_hosts_v4, &mid);
		if (!h)
			return 0;
		if (h->addr == a)
			return mid + 1;
		if (h->addr < a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

/* The action of the host table's live rule for the address (0 = none); the rule goes to the level's rule_match. */
static __always_inline __u32 host_rule_v4(__u32 addr, __u32 level)
{
	struct cgdrop_host *h;
	struct rule_match *m;
	__u32 i = host_index_v4(addr);

	if (!i)
		return 0;
	i -= 1;
	h = bpf_map_lookup_elem(&cgdrop_hosts_v4, &i);
	if (!h || !h->action)
		return 0;
	level &= CGDROP_LEVELS - 1;
	m = bpf_map_lookup_elem(&cgdrop_match, &level);
	if (m) {
		m->prefixlen = CGDROP_PORT_BITS + 32;
		m->expires_ns = 0;
		m->hit_key = h->hit_key;
		m->action = h->action;
		m->port = 0;
	}
	return h->action;
}

/*
 * The action of the rule for the address (as words) with this port, else
 * without a port (0 = none, UNDECIDED); the rule is left in the level's
 * rule_match. `port_level` is port | nesting level << 16.
 */
static __always_inline __u32 rules_v4(__u32 addr, __u32 port_level)
{
	__u32 level = port_level >> 16;
	__u16 port = port_level & 0xffff;
	struct cgdrop_key_v4 key = { .prefixlen = CGDROP_PORT_BITS + 32, .port = bpf_htons(port) };
	__u32 action = 0;

	__builtin_memcpy(key.addr, &addr, 4);
	if (port) {
		action = lookup_fast(&cgdrop_rules_v4, &key, port, level);
		if (action == HAS_TTL)
			action = rules_v4_ttl(addr, port_level);
		if (action)
			return action;
	}
	key.port = 0;
	/* A /32 is the longest prefix without a port: the host table first. */
	if (cfg.hosts_v4) {
		action = host_rule_v4(addr, level);
		if (action)
			return action;
	}
	action = lookup_fast(&cgdrop_rules_v4, &key, 0, level);
	if (action == HAS_TTL)
		action = rules_v4_ttl(addr, level << 16);
	return action;
}

static __always_inline __u32 rules_v6(__u32 a0, __u32 a1, __u32 a2, __u32 a3, __u32 port_level)
{
	__u32 level = port_level >> 16;
	__u16 port = port_level & 0xffff;
	struct cgdrop_key_v6 key = { .prefixlen = CGDROP_PORT_BITS + 128, .port = bpf_htons(port) };
	__u32 a[4] = { a0, a1, a2, a3 };
	__u32 action = 0;

	__builtin_memcpy(key.addr, a, 16);
	if (port) {
		action = lookup_fast(&cgdrop_rules_v6, &key, port, level);
		if (action == HAS_TTL)
			action = rules_v6_ttl(a0, a1, a2, a3, port_level);
		if (action)
			return action;
	}
	key.port = 0;
	action = lookup_fast(&cgdrop_rules_v6, &key, 0, level);
	if (action == HAS_TTL)
		action = rules_v6_ttl(a0, a1, a2, a3, level << 16);
	return action;
}

/* ::ffff:a.b.c.d is matched as the IPv4 address a.b.c.d. */
static __always_inline bool v4_mapped(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/*
 * One more hit for the rule that decided (the level's rule_match), at the
 * run's nesting level. A first hit creates the entry; if another CPU, or a
 * run that interrupted this one, created it in between, the update fails
 * and the count goes to the entry it made.
 */
static __always_inline int count_hit(__u32 level, __u32 shared)
{
	struct rule_match *m = bpf_map_lookup_elem(&cgdrop_match, &level);
	struct cgdrop_hits *h, first = {};
	__u64 now;

	/* Called only when a rule decided: the level's rule_match is that rule. */
	if (!m)
		return 0;
	now = bpf_ktime_get_boot_ns();
	h = bpf_map_lookup_elem(&cgdrop_hits, &m->hit_key);
	if (!h) {
		first.hits[level & (CGDROP_LEVELS - 1)] = 1;
		first.last_ns = now;
		if (!bpf_map_update_elem(&cgdrop_hits, &m->hit_key, &first, BPF_NOEXIST))
			return 0;
		h = bpf_map_lookup_elem(&cgdrop_hits, &m->hit_key);
		if (!h)
			return 0;
	}
	if (shared)
		__sync_fetch_and_add(&h->hits[level & (CGDROP_LEVELS - 1)], 1);
	else
		h->hits[level & (CGDROP_LEVELS - 1)] += 1;
	h->last_ns = now;
	return 0;
}

/* The sieve's words (NULL if the lookup failed, which it cannot for an array). */
static __always_inline struct cgdrop_sieve_words *sieve_words(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cgdrop_sieve, &zero);
}

/* Whether bit `bit` of the sieve is set; "maybe" (true) without the words or past them. */
static __always_inline bool sieve_bit(struct cgdrop_sieve_words *s, __u32 bit)
{
	__u32 word = bit >> 6;

	if (!s || word >= CGDROP_SIEVE_WORDS)
		return true;
	return (s->w[word] >> (bit & 63)) & 1;
}

/* The multiplier of the IPv6 long part's hash (the same in src/kernel/sieve.rs). */
#define SIEVE_V6_HASH 0x9e3779b97f4a7c15ULL

/*
 * Whether a rule may match an address (as words, network order): false
 * means none can, and the lookups are skipped (enum cgdrop_sieve).
 */
static __always_inline bool sieve_v4(__u32 a)
{
	return sieve_bit(sieve_words(), CGDROP_SIEVE_V4_WORD * 64 + (bpf_ntohl(a) >> (32 - CGDROP_SIEVE_V4_BITS)));
}

static __always_inline bool sieve_v6(__u32 a0, __u32 a1)
{
	struct cgdrop_sieve_words *s = sieve_words();
	__u64 top = ((__u64)bpf_ntohl(a0) << 32) | bpf_ntohl(a1);
	/* Both bits below the end of the words by their ranges (no test needed). */
	__u32 shrt = CGDROP_SIEVE_V6_SHORT_WORD * 64 + (bpf_ntohl(a0) >> (32 - CGDROP_SIEVE_V6_SHORT_BITS));
	__u32 lng = CGDROP_SIEVE_V6_LONG_WORD * 64 + ((top * SIEVE_V6_HASH) >> (64 - CGDROP_SIEVE_V6_LONG_BITS));

	if (!s)
		return true;
	/*
	 * Both words read and one test, not two tests in a row: a pass (both
	 * clear, the common case) takes one branch, and the two loads overlap.
	 */
	return ((s->w[shrt >> 6] >> (shrt & 63)) | (s->w[lng >> 6] >> (lng & 63))) & 1;
}

/*
 * Does the policy drop traffic with this remote address and port (host
 * order, 0 = none)? A rule with the port beats one without.
 */
static __always_inline bool policy_drops(__u8 family, const __u8 *addr, __u16 port, struct decision *d)
{
	const __u32 *w = (const __u32 *)addr;
	__u32 port_level;
	__u32 action = 0;

	d->reason = CGDROP_REASON_DEFAULT;
	if (!has_rules)
		return !unmatched_pass;
	if (!has_port_rules)
		port = 0;
	port_level = port | (d->level << 16);
	if (family != 4 && family != 6)
		return !unmatched_pass;
	/* One inlined copy of each lookup: IPv4 and IPv4-mapped IPv6 share theirs. */
	if (family == 4 || v4_mapped(addr)) {
		if (!sieve_v4(family == 4 ? w[0] : w[3]))
			return !unmatched_pass;
		action = rules_v4(family == 4 ? w[0] : w[3], port_level);
	} else {
		if (!sieve_v6(w[0], w[1]))
			return !unmatched_pass;
		action = rules_v6(w[0], w[1], w[2], w[3], port_level);
	}
	d->found = action == CGDROP_ACTION_ALLOW || action == CGDROP_ACTION_DENY;
	if (action == CGDROP_ACTION_ALLOW)
		return false;
	if (action == CGDROP_ACTION_DENY) {
		d->reason = CGDROP_REASON_RULE;
		return true;
	}
	if (action == UNDECIDED) {
		d->reason = CGDROP_REASON_UNDECIDED;
		return true;
	}
	return !unmatched_pass;
}

/*
 * Headers are read in place when they are in the linear part of the skb
 * (direct packet access: no copy); headers in paged data (GRO'd or zero-copy
 * packets) are copied out with bpf_skb_load_bytes instead.
 */
#define HDR(skb, off, type, copy)                                                          \
	({                                                                                 \
		void *data_ = (void *)(long)(skb)->data;                                   \
		void *end_ = (void *)(long)(skb)->data_end;                                \
		type *h_ = data_ + (off);                                                  \
		if ((void *)(h_ + 1) > end_)                                               \
			h_ = bpf_skb_load_bytes((skb), (off), &(copy), sizeof(type)) ? NULL \
										   : &(copy); \
		h_;                                                                        \
	})

struct ports {
	__be16 source;
	__be16 dest;
};

static __always_inline void read_ports(struct __sk_buff *skb, __u32 off, struct pkt_info *pkt)
{
	struct ports copy;
	struct ports *p = HDR(skb, off, struct ports, copy);

	if (!p)
		return;
	pkt->sport = bpf_ntohs(p->source);
	pkt->dport = bpf_ntohs(p->dest);
	pkt->has_ports = 1;
	pkt->l4_off = off;
}

/*
 * Bit p % 64 of word p / 64: protocol p starts with the two ports
 * (proto_ports), is an IPv6 extension header that is walked past
 * (proto_ext). One load and a shift instead of a chain of compares, for the
 * verifier: once a compare has made the protocol a known constant, the next
 * compare of it marks it precise, and then each protocol got its own copy of
 * the rest of the parse verified (the ports' read was walked ~9 times per
 * copy). Read with a variable index, these never become constants.
 */
const volatile __u64 proto_ports[4] = {
	1ULL << IPPROTO_TCP | 1ULL << IPPROTO_UDP | 1ULL << PROTO_DCCP,
	0,
	1ULL << (PROTO_SCTP - 128) | 1ULL << (PROTO_UDPLITE - 128),
	0,
};
const volatile __u64 proto_ext[4] = {
	1ULL << NEXTHDR_HOP | 1ULL << NEXTHDR_ROUTING | 1ULL << NEXTHDR_FRAGMENT | 1ULL << NEXTHDR_DEST |
		1ULL << NEXTHDR_AUTH,
	0,
	0,
	0,
};

static __always_inline bool proto_bit(const volatile __u64 *words, __u8 proto)
{
	return (words[proto >> 6] >> (proto & 63)) & 1;
}

static __always_inline bool proto_has_ports(__u8 proto)
{
	return proto_bit(proto_ports, proto);
}

static __always_inline void parse_ipv4(struct __sk_buff *skb, struct pkt_info *pkt, bool egress)
{
	struct iphdr copy;
	struct iphdr *ip = HDR(skb, 0, struct iphdr, copy);
	__u32 ihl;

	if (!ip)
		return;
	pkt->family = 4;
	if (has_rules)
		__builtin_memcpy(pkt->addr, egress ? &ip->daddr : &ip->saddr, 4);
	if (ip->frag_off & bpf_htons(IP_OFFSET_MASK))
		return;
	if (!proto_has_ports(ip->protocol))
		return;
	ihl = ip->ihl;
	if (ihl < 5)
		return;
	pkt->proto = ip->protocol;
	read_ports(skb, ihl * 4, pkt);
}

/*
 * A routing header with segments left sends the packet on to further
 * destinations: the last one is where it ends up, and is judged as well as
 * the first (in the IPv6 header). Returns nonzero when it cannot be read.
 */
static __always_inline int read_final(struct __sk_buff *skb, __u32 off, struct pkt_info *pkt)
{
	struct {
		__u8 nexthdr;
		__u8 hdrlen;
		__u8 type;
		__u8 segments_left;
	} rt;
	__u32 at;

	if (bpf_skb_load_bytes(skb, off, &rt, sizeof(rt)))
		return -1;
	if (!rt.segments_left)
		return 0;
	switch (rt.type) {
	case IPV6_SRCRT_TYPE_4:
		/* Segment routing: segments[0], right after the 8-byte header, is the last segment. */
		at = off + 8;
		break;
	case IPV6_SRCRT_TYPE_2:
		/* Mobile IPv6: one address, the home address. */
		at = off + 8;
		break;
	case IPV6_SRCRT_TYPE_0:
		/* hdrlen / 2 addresses after the 8-byte header; the last is the final destination. */
		if (rt.hdrlen < 2)
			return -1;
		at = off + 8 + (rt.hdrlen / 2 - 1) * 16;
		break;
	default:
		/* An unknown type with segments left: the destination is unknown. */
		return -1;
	}
	if (bpf_skb_load_bytes(skb, at, pkt->final_addr, 16))
		return -1;
	pkt->has_final = 1;
	return 0;
}

/* Whether an IPv6 next header is an extension header that is walked past. */
static __always_inline bool ipv6_ext(__u8 next)
{
	return proto_bit(proto_ext, next);
}

/* ipv6_ext_step's answers besides where the next header is. */
#define EXT_UNDECIDED -1
#define EXT_LATER_FRAGMENT -2

/*
 * One step of the IPv6 extension header walk: the extension header `next`
 * at `off`. `arg` is off << 8 | next, with 1 << 24 for egress and the
 * nesting level << 25 (a routing header's final destination goes to the
 * level's cgdrop_pkt). Returns the offset and type of the header after it
 * (same packing), EXT_LATER_FRAGMENT for a fragment other than the first
 * (no transport header), EXT_UNDECIDED when it cannot be read. A global
 * function (see final_drops): the steps' paths are verified once instead of
 * multiplying each other (one step was ~1,500 instructions walked per step).
 */
__noinline int ipv6_ext_step(struct __sk_buff *skb, __u32 arg)
{
	__u32 off = (arg >> 8) & 0xffff;
	__u8 next = arg & 0xff;
	__u32 level = (arg >> 25) & (CGDROP_LEVELS - 1);
	struct pkt_info *pkt;
	/* The start of every extension header; a fragment header is 8 bytes. */
	struct {
		__u8 nexthdr;
		__u8 hdrlen;
		__be16 frag_off;
		__u32 rest;
	} ext;

	/*
	 * Only what every extension header has: a header cut short after its
	 * first two bytes is walked past as before (its length is known).
	 */
	if (bpf_skb_load_bytes(skb, off, &ext, 2))
		return EXT_UNDECIDED;
	if (next == NEXTHDR_FRAGMENT) {
		if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)))
			return EXT_UNDECIDED;
		/* Only the first fragment carries the L4 header. */
		if (ext.frag_off & bpf_htons(0xfff8))
			return EXT_LATER_FRAGMENT;
		off += sizeof(ext);
	} else if (next == NEXTHDR_AUTH) {
		off += (ext.hdrlen + 2) * 4;
	} else {
		if (next == NEXTHDR_ROUTING && (arg & (1 << 24))) {
			pkt = bpf_map_lookup_elem(&cgdrop_pkt, &level);
			if (!pkt || read_final(skb, off, pkt))
				return EXT_UNDECIDED;
		}
		off += (ext.hdrlen + 1) * 8;
	}
	return (off & 0xffff) << 8 | ext.nexthdr;
}

/* `pkt` is the level's cgdrop_pkt (ipv6_ext_step writes a final destination there). */
static __always_inline void parse_ipv6(struct __sk_buff *skb, struct pkt_info *pkt, bool egress, __u32 level)
{
	struct ipv6hdr copy;
	struct ipv6hdr *ip6 = HDR(skb, 0, struct ipv6hdr, copy);
	__u32 off = sizeof(struct ipv6hdr);
	__u8 next;
	int at;

	if (!ip6)
		return;
	pkt->family = 6;
	if (has_rules)
		__builtin_memcpy(pkt->addr, egress ? &ip6->daddr : &ip6->saddr, 16);
	next = ip6->nexthdr;

	for (int i = 0; i < MAX_IPV6_EXT && ipv6_ext(next); i++) {
		at = ipv6_ext_step(skb, off << 8 | next | (egress ? 1 << 24 : 0) | (level & (CGDROP_LEVELS - 1)) << 25);
		if (at == EXT_LATER_FRAGMENT)
			return;
		if (at < 0)
			goto undecided;
		/*
		 * At most 40 + 4 × 2,048 bytes: 14 bits. Masked so, the verifier
		 * lets the ports be read in place (it wants offset + size ≤ 0xffff).
		 */
		off = (at >> 8) & 0x3fff;
		next = at & 0xff;
	}
	/* More extension headers than are walked: where it goes or which port it has is unknown. */
	if (ipv6_ext(next))
		goto undecided;
	if (!proto_has_ports(next))
		return;
	pkt->proto = next;
	read_ports(skb, off, pkt);
	return;
undecided:
	pkt->undecided = 1;
}

/* judge()'s and final_drops()' answer besides the reason: a live rule decided. */
#define JUDGED_FOUND 0x100

/*
 * Whether the policy drops the final destination of an IPv6 routing header
 * (in the level's cgdrop_pkt) with this port: 0 = no, else the reason |
 * JUDGED_FOUND when a rule decided. `port_level` is port | level << 16.
 *
 * On the calls in these programs. Each call and return costs here: this
 * machine's kernel returns through a "safe RET" thunk (AMD SRSO mitigation),
 * and a global function call measured ~10-20 ns per packet. So the common
 * path (the verdict of a packet without extension headers, its counters,
 * the rule lookups) is inlined, and global functions — verified once, not
 * once per path of their caller, which is what makes loading fast — hold
 * the rare paths: the IPv6 extension header walk, a routing header's final
 * destination, and the events.
 */
__noinline int final_drops(__u32 port_level)
{
	struct decision d = { .level = (port_level >> 16) & (CGDROP_LEVELS - 1) };
	struct pkt_info *pkt = bpf_map_lookup_elem(&cgdrop_pkt, &d.level);

	if (!pkt)
		return CGDROP_REASON_UNDECIDED;
	if (!policy_drops(6, pkt->final_addr, port_level & 0xffff, &d))
		return 0;
	return d.reason | (d.found ? JUDGED_FOUND : 0);
}

/* Would the policy drop this packet (steps 2 to 5 of the verdict order)? */
static __always_inline bool skb_drops(struct __sk_buff *skb, bool egress, struct pkt_info *pkt, struct decision *m)
{
	__u16 port;
	int judged;

	if (cfg.ifindex && (skb->ifindex != cfg.ifindex ||
			    (cfg.netns_cookie && bpf_get_netns_cookie(skb) != cfg.netns_cookie)))
		return false;
	m->reason = CGDROP_REASON_DEFAULT;
	/* Nothing to match a packet against: no need to read it. */
	if (!cfg.port && !has_rules)
		return !unmatched_pass;
	/* skb->protocol, not skb->family: the latter is the socket's family. */
	if (skb->protocol == bpf_htons(ETH_P_IP))
		parse_ipv4(skb, pkt, egress);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		parse_ipv6(skb, pkt, egress, m->level);
	/* A header chain that could not be walked: in scope, and undecidable, so dropped. */
	if (pkt->undecided) {
		m->reason = CGDROP_REASON_UNDECIDED;
		return true;
	}
	/* Packets without ports (ICMP, non-first fragments, unparsable) never match a port. */
	if (cfg.port && !(pkt->has_ports && (in_port_range(pkt->sport) || in_port_range(pkt->dport))))
		return false;
	/* 0 without ports (judge() clears them): no test the verifier would split its walk on. */
	port = egress ? pkt->dport : pkt->sport;
	if (pkt->has_final) {
		judged = final_drops(port | m->level << 16);
		if (judged) {
			m->reason = judged & 0xff;
			m->found = (judged & JUDGED_FOUND) != 0;
			return true;
		}
	}
	return policy_drops(pkt->family, pkt->addr, port, m);
}

/*
 * An event to fill, or NULL: events are off, or this CPU spent its budget
 * for the current second (then it counts what it leaves out, and says so in
 * a record of its own when the next second starts: nothing is lost silently).
 */
static __always_inline struct cgdrop_event *event_start(__u64 cgroup_id)
{
	struct cgdrop_budget *b;
	struct cgdrop_event *ev;
	__u32 zero = 0;
	__u64 now;

	if (!cfg.events_per_cpu)
		return NULL;
	b = bpf_map_lookup_elem(&cgdrop_budget, &zero);
	ev = bpf_map_lookup_elem(&cgdrop_scratch, &zero);
	if (!b || !ev)
		return NULL;
	now = bpf_ktime_get_boot_ns();
	if (now - b->window_ns >= 1000000000ULL) {
		if (b->suppressed) {
			__builtin_memset(ev, 0, sizeof(*ev));
			ev->time_ns = now;
			ev->cgroup_id = cgroup_id;
			ev->hook = CGDROP_STAT_SLOTS;
			ev->suppressed = b->suppressed;
			if (bpf_ringbuf_output(&cgdrop_events, ev, sizeof(*ev), 0))
				return NULL;
		}
		b->window_ns = now;
		b->sent = 0;
		b->suppressed = 0;
	}
	if (b->sent >= cfg.events_per_cpu) {
		b->suppressed++;
		return NULL;
	}
	b->sent++;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->time_ns = now;
	ev->cgroup_id = cgroup_id;
	return ev;
}

/* Sends a filled event; a full ring buffer counts it as left out. */
static __always_inline void event_send(struct cgdrop_event *ev)
{
	struct cgdrop_budget *b;
	__u32 zero = 0;

	if (!bpf_ringbuf_output(&cgdrop_events, ev, sizeof(*ev), 0))
		return;
	b = bpf_map_lookup_elem(&cgdrop_budget, &zero);
	if (b)
		b->suppressed++;
}

static __always_inline void event_rule(struct cgdrop_event *ev, struct decision *d)
{
	__u32 level = d->level & (CGDROP_LEVELS - 1);
	struct rule_match *m;

	ev->reason = d->reason;
	if (d->reason != CGDROP_REASON_RULE)
		return;
	/* A rule decided: the level's rule_match is it. */
	m = bpf_map_lookup_elem(&cgdrop_match, &level);
	if (!m)
		return;
	ev->rule_action = m->action;
	ev->rule_prefix = m->prefixlen - CGDROP_PORT_BITS;
	ev->rule_port = m->port;
	ev->rule_expires_ns = m->expires_ns;
}

/*
 * A drop by an skb program: addresses from the packet, the owner from the
 * socket's storage. A global function (see final_drops), called only with
 * events on; `packed` is the stats slot | egress << 3 | enum cgdrop_verdict
 * << 4 | enum cgdrop_reason << 8 | the nesting level << 16 (its cgdrop_pkt
 * and rule_match).
 */
__noinline int skb_event(struct __sk_buff *skb, __u32 packed)
{
	struct decision d = { .level = (packed >> 16) & (CGDROP_LEVELS - 1), .reason = (packed >> 8) & 0xff };
	/*
	 * 1 for egress (the local address and port are the source's). Used as
	 * an index, not tested: each test of it split the verifier's walk of
	 * the rest in two.
	 */
	__u32 e = (packed >> 3) & 1;
	struct pkt_info *pkt = bpf_map_lookup_elem(&cgdrop_pkt, &d.level);
	struct cgdrop_event *ev;
	struct cgdrop_owner *o;
	struct bpf_sock *sk;
	__u32 l4 = 0;

	if (!pkt)
		return 0;
	ev = event_start(bpf_skb_cgroup_id(skb));
	if (!ev)
		return 0;
	ev->hook = packed & 7;
	ev->verdict = (packed >> 4) & 7;
	ev->len = skb->len;
	event_rule(ev, &d);
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (!bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip))) {
			const __u32 *w = (const __u32 *)&ip;
			/* The source is word 3, the destination word 4. */
			__u32 local = w[4 - e], remote = w[3 + e];

			ev->family = 4;
			ev->proto = ip.protocol;
			__builtin_memcpy(ev->local, &local, 4);
			__builtin_memcpy(ev->remote, &remote, 4);
			if (!(ip.frag_off & bpf_htons(IP_OFFSET_MASK)))
				l4 = ip.ihl * 4;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (!bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6))) {
			const __u32 *w = (const __u32 *)&ip6;
			/* The source is words 2 to 5, the destination words 6 to 9. */
			__u32 local[4] = { w[6 - 4 * e], w[7 - 4 * e], w[8 - 4 * e], w[9 - 4 * e] };
			__u32 remote[4] = { w[2 + 4 * e], w[3 + 4 * e], w[4 + 4 * e], w[5 + 4 * e] };

			ev->family = 6;
			ev->proto = ip6.nexthdr;
			__builtin_memcpy(ev->local, local, 16);
			__builtin_memcpy(ev->remote, remote, 16);
			l4 = sizeof(ip6);
		}
	}
	/* The fast path (no rules, no port filter) did not read the ports. */
	if (!pkt->has_ports && l4 && proto_has_ports(ev->proto))
		read_ports(skb, l4, pkt);
	if (pkt->has_ports) {
		/* sport, then dport. */
		const __u16 *ports = &pkt->sport;

		ev->local_port = ports[1 - e];
		ev->remote_port = ports[e];
	}
	sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk) {
		o = bpf_sk_storage_get(&cgdrop_owners, sk, 0, 0);
		if (o && (o->flags & CGDROP_OWNER_KNOWN)) {
			ev->owner_known = 1;
			ev->pid = o->pid;
			ev->tgid = o->tgid;
			ev->uid = o->uid;
			__builtin_memcpy(ev->comm, o->comm, sizeof(ev->comm));
		}
	}
	event_send(ev);
	return 0;
}

/*
 * A packet of a socket cgdrop is closing (--kill-existing): the reset that
 * bpf_sock_destroy sends, while cgdrop holds the socket's lock (nothing else
 * can be sent from it then, and nothing after: it is closed).
 */
static __always_inline bool closing_socket(struct __sk_buff *skb)
{
	struct cgdrop_owner *o;
	struct bpf_sock *sk;
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&cgdrop_killing, &zero);

	if (!on || !*on)
		return false;
	sk = skb->sk;
	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return false;
	o = bpf_sk_storage_get(&cgdrop_owners, sk, 0, 0);
	return o && (o->flags & CGDROP_OWNER_CLOSING);
}

/* TCP flags */
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/*
 * --no-new-inbound: an inbound TCP connection request (SYN without ACK).
 * Parses the packet into `pkt` (which the rules then use as it is).
 */
static __always_inline bool new_inbound(struct __sk_buff *skb, struct pkt_info *pkt, __u32 level)
{
	__u8 flags;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		parse_ipv4(skb, pkt, false);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		parse_ipv6(skb, pkt, false, level);
	if (!pkt->has_ports || pkt->proto != IPPROTO_TCP || bpf_skb_load_bytes(skb, pkt->l4_off + 13, &flags, 1))
		return false;
	return (flags & TCP_FLAG_SYN) && !(flags & TCP_FLAG_ACK);
}

/*
 * Events off, everything in this direction in scope and no rule: the
 * verdict is what no rule matches gets, whatever the packet.
 */
static __always_inline bool nothing_to_match(bool egress)
{
	if (cfg.ifindex || cfg.port || cfg.events_per_cpu || (cfg.modes & CGDROP_MODE_NO_NEW_INBOUND) ||
	    !(cfg.directions & (egress ? CGDROP_DIR_EGRESS : CGDROP_DIR_INGRESS)))
		return false;
	return !has_rules;
}

/*
 * Steps 1 to 5 of the verdict for a packet: 0 = pass, else the enum
 * cgdrop_reason of the drop; JUDGED_FOUND added when a rule decided. The packet is parsed into the level's cgdrop_pkt.
 */
static __always_inline int judge(struct __sk_buff *skb, bool egress, __u32 level, struct pkt_info *pkt)
{
	struct decision d = { .level = level & (CGDROP_LEVELS - 1) };

	/*
	 * Nothing to match the packet against: no parse. (drops_all takes the
	 * drop-all case ahead of this; here too, the verifier's walk is shorter.)
	 */
	if (nothing_to_match(egress))
		return unmatched_pass ? 0 : CGDROP_REASON_DEFAULT;
	/*
	 * Not the whole struct: what is read is set by the parsing, behind
	 * these flags (the addresses only when has_rules, the ports behind
	 * has_ports, the final destination behind has_final).
	 */
	pkt->family = 0;
	pkt->has_final = 0;
	pkt->undecided = 0;
	pkt->has_ports = 0;
	pkt->sport = 0;
	pkt->dport = 0;
	if (!egress && (cfg.modes & CGDROP_MODE_NO_NEW_INBOUND) && new_inbound(skb, pkt, d.level))
		return CGDROP_REASON_NEW_INBOUND;
	if (!(cfg.directions & (egress ? CGDROP_DIR_EGRESS : CGDROP_DIR_INGRESS)))
		return 0;
	if (!skb_drops(skb, egress, pkt, &d))
		return d.found ? JUDGED_FOUND : 0;
	return d.reason | (d.found ? JUDGED_FOUND : 0);
}

/*
 * The pass path of a block list, inlined ahead of the full verdict: true when
 * no rule can match the packet's remote address (the sieve says so) and
 * nothing else in the policy could drop it, so it certainly passes. False
 * sends the packet on to judge(), which decides everything, this case
 * included: this only spares the common case the scratch, the parse of the
 * ports and the lookups.
 */
static __always_inline bool surely_passes(struct __sk_buff *skb, bool egress)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	/* First: a policy that drops what no rule matches (drop-all, allow lists) stops here. */
	if (!unmatched_pass)
		return false;
	/* One test of the three (constants to the verifier): a run pays one branch, not three. */
	if ((cfg.ifindex | cfg.port | (cfg.modes & CGDROP_MODE_NO_NEW_INBOUND)) != 0)
		return false;
	if (!has_rules)
		return true;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > end)
			return false;
		return !sieve_v4(egress ? ip->daddr : ip->saddr);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;
		const __u32 *w;

		/*
		 * Extension headers (a routing header's final destination): judge()
		 * walks them. TCP and UDP, the common next headers, are told apart
		 * before the table is read.
		 */
		if ((void *)(ip6 + 1) > end)
			return false;
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP && ipv6_ext(ip6->nexthdr))
			return false;
		w = egress ? (const __u32 *)&ip6->daddr : (const __u32 *)&ip6->saddr;
		if (v4_mapped((const __u8 *)w))
			return !sieve_v4(w[3]);
		return !sieve_v6(w[0], w[1]);
	}
	return false;
}

/*
 * What a packet the policy drops gets: dropped (0), unless dry-run (1).
 * Egress 2 = drop with congestion notification: the kernel reports
 * NET_XMIT_DROP instead of EPERM, which UDP hides from the sender, so a
 * silent policy looks like a cut cable rather than a refusal.
 */
static __always_inline int drop_verdict(enum cgdrop_direction direction)
{
	if (cfg.modes & CGDROP_MODE_DRY_RUN)
		return 1;
	return (cfg.modes & CGDROP_MODE_SILENT) && direction == CGDROP_DIR_EGRESS ? 2 : 0;
}

/*
 * Drop-all without events: the verdict needs neither the packet nor the
 * scratch (skb_decide would decide the same).
 */
static __always_inline bool drops_all(bool egress)
{
	return nothing_to_match(egress) && !unmatched_pass;
}

/*
 * The cgroup_skb verdict (as skb_verdict), with how it was decided in *mp;
 * `pkt` is the level's cgdrop_pkt.
 */
static __always_inline int skb_decide(struct __sk_buff *skb, __u32 slot, enum cgdrop_direction direction,
				      struct pkt_info *pkt, struct decision *mp)
{
	__u32 level = mp->level & (CGDROP_LEVELS - 1);
	int judged;

	judged = forget_in(&pkt->scratch, judge(skb, direction == CGDROP_DIR_EGRESS, level, pkt));
	mp->found = (judged & JUDGED_FOUND) != 0;
	mp->reason = judged & 0xff;
	if (!mp->reason)
		return 1;
	if (direction == CGDROP_DIR_EGRESS && closing_socket(skb))
		return 1;
	mp->dropped = 1;
	if (cfg.events_per_cpu)
		skb_event(skb, slot | (direction == CGDROP_DIR_EGRESS) << 3 |
				       ((cfg.modes & CGDROP_MODE_DRY_RUN) ? CGDROP_VERDICT_WOULD_DROP : CGDROP_VERDICT_DROPPED)
					       << 4 |
				       mp->reason << 8 | level << 16);
	return drop_verdict(direction);
}

/* The packets a run stands for: a GSO packet stands for gso_segs packets on the wire. */
static __always_inline __u64 skb_segs(struct __sk_buff *skb)
{
	return skb->gso_segs ? skb->gso_segs : 1;
}

/* Returns the cgroup_skb verdict: 1 pass, 0 drop; 2 (egress) drop without an error for the sender. */
static __always_inline int skb_verdict(struct __sk_buff *skb, __u32 slot, enum cgdrop_direction direction)
{
	struct counting k = {};
	struct pkt_info *pkt;
	int verdict;

	/* Apart from the full verdict, so that its code stays short and straight. */
	if (surely_passes(skb, direction == CGDROP_DIR_EGRESS)) {
		enter(&k, slot);
		count_run(&k, skb_segs(skb), skb->len, true, false);
		leave(&k);
		return 1;
	}
	/* The other short case: everything in scope is dropped (as skb_decide would). */
	if (drops_all(direction == CGDROP_DIR_EGRESS)) {
		/* The reset of a socket that --kill-existing closes goes out. */
		bool closing = direction == CGDROP_DIR_EGRESS && closing_socket(skb);

		enter(&k, slot);
		count_run(&k, skb_segs(skb), skb->len, true, !closing);
		leave(&k);
		return closing ? 1 : drop_verdict(direction);
	}
	/* Made only here: zeroed at the top, the pass path paid for it. */
	struct decision m = {};

	enter(&k, slot);
	m.level = k.level & (CGDROP_LEVELS - 1);
	pkt = bpf_map_lookup_elem(&cgdrop_pkt, &m.level);
	/* Never: an array's lookup below its size does not fail. Dropped, as undecided. */
	if (!pkt) {
		count_run(&k, skb_segs(skb), skb->len, true, true);
		leave(&k);
		return 0;
	}
	verdict = skb_decide(skb, slot, direction, pkt, &m);
	verdict = forget_in(&pkt->scratch, verdict | m.dropped << 8 | m.found << 9);
	/* Read here, not kept through the verdict (where the verifier would carry them). */
	count_run(&k, skb_segs(skb), skb->len, true, verdict & (1 << 8));
	if (verdict & (1 << 9))
		count_hit(m.level, k.shared);
	leave(&k);
	/*
	 * 0 or 1; 2 only from a silent egress (see drop_verdict): a range the
	 * verifier accepts for any cgroup_skb program without it (bpftool
	 * loads this object with no attach type, where only 0 and 1 are).
	 */
	return verdict & ((cfg.modes & CGDROP_MODE_SILENT) && direction == CGDROP_DIR_EGRESS ? 3 : 1);
}

SEC("cgroup_skb/ingress")
int cgdrop_ingress(struct __sk_buff *skb)
{
	return skb_verdict(skb, CGDROP_STAT_INGRESS, CGDROP_DIR_INGRESS);
}

SEC("cgroup_skb/egress")
int cgdrop_egress(struct __sk_buff *skb)
{
	return skb_verdict(skb, CGDROP_STAT_EGRESS, CGDROP_DIR_EGRESS);
}

/*
 * Returns 1 (allow) or 0 (the call fails with EPERM). Rejects what the skb
 * programs would drop: a TCP handshake fails if either direction is dropped;
 * a UDP connect() or sendmsg() only matters when egress is dropped.
 */
/* Records the calling process as the owner of `sk`, for the skb programs' events. */
static __always_inline void record_owner(void *sk)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct cgdrop_owner *o;

	if (!cfg.events_per_cpu)
		return;
	o = bpf_sk_storage_get(&cgdrop_owners, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o || o->pid == (__u32)pid_tgid)
		return;
	o->pid = (__u32)pid_tgid;
	o->tgid = pid_tgid >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->flags |= CGDROP_OWNER_KNOWN;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/*
 * A rejection by a connect/sendmsg program: it runs in the caller's context.
 * `packed` is the stats slot | enum cgdrop_reason << 8 | the nesting level
 * << 16.
 */
static __always_inline int sock_event(struct bpf_sock_addr *ctx, __u32 packed, __u8 family)
{
	struct decision d = { .level = (packed >> 16) & (CGDROP_LEVELS - 1), .reason = (packed >> 8) & 0xff };
	__u16 remote_port = bpf_ntohs((__u16)ctx->user_port);
	struct cgdrop_event *ev = event_start(bpf_get_current_cgroup_id());
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 remote[4];

	if (!ev)
		return 0;
	/* The context allows only 4-byte reads of user_ip6. */
	if (family == 4) {
		remote[0] = ctx->user_ip4;
	} else {
		remote[0] = ctx->user_ip6[0];
		remote[1] = ctx->user_ip6[1];
		remote[2] = ctx->user_ip6[2];
		remote[3] = ctx->user_ip6[3];
	}
	ev->hook = packed & 7;
	ev->verdict = (cfg.modes & CGDROP_MODE_DRY_RUN) ? CGDROP_VERDICT_WOULD_REJECT : CGDROP_VERDICT_REJECTED;
	event_rule(ev, &d);
	ev->family = family;
	ev->proto = ctx->protocol;
	ev->owner_known = 1;
	ev->pid = (__u32)pid_tgid;
	ev->tgid = pid_tgid >> 32;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	if (family == 4)
		__builtin_memcpy(ev->remote, remote, 4);
	else
		__builtin_memcpy(ev->remote, remote, 16);
	ev->remote_port = remote_port;
	ev->local_port = ctx->sk->src_port;
	if (family == 4) {
		__u32 src = ctx->sk->src_ip4;

		__builtin_memcpy(ev->local, &src, 4);
	}
	event_send(ev);
	return 0;
}

/*
 * sock_event as global functions (see final_drops), one per family (with the
 * family a variable, clang merges the two context reads into one the
 * verifier refuses); called only with events on.
 */
__noinline int sock_event4(struct bpf_sock_addr *ctx, __u32 packed)
{
	return sock_event(ctx, packed, 4);
}

__noinline int sock_event6(struct bpf_sock_addr *ctx, __u32 packed)
{
	return sock_event(ctx, packed, 6);
}

/*
 * Returns 1 (allow) or 0 (the call fails with EPERM). Rejects what the skb
 * programs would drop: a TCP handshake fails if either direction is dropped;
 * a UDP connect() or sendmsg() only matters when egress is dropped.
 */
static __always_inline int sock_addr_decide(struct bpf_sock_addr *ctx, __u32 slot, __u8 family, struct decision *mp)
{
	__u16 remote_port = bpf_ntohs((__u16)ctx->user_port);
	__u32 ip6[4];

	/* Checked here too: the verifier then never sees the ctx->sk read with events off. */
	if (cfg.events_per_cpu)
		record_owner(ctx->sk);
	/* The outgoing interface is not known at connect() time: never reject then. */
	if (cfg.ifindex || !cfg.directions || (cfg.modes & CGDROP_MODE_SILENT))
		return 1;
	if (ctx->type != SOCK_STREAM && !(cfg.directions & CGDROP_DIR_EGRESS))
		return 1;
	if (cfg.port) {
		if (!proto_has_ports(ctx->protocol))
			return 1;
		/* A socket bound to the filtered port sends from it. */
		if (!in_port_range(remote_port) && !in_port_range(ctx->sk->src_port))
			return 1;
	}
	if (family == 4) {
		ip6[0] = ctx->user_ip4;
		if (!policy_drops(4, (__u8 *)ip6, remote_port, mp))
			return 1;
	} else {
		/* The context allows only 4-byte reads of user_ip6. */
		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
		if (!policy_drops(6, (__u8 *)ip6, remote_port, mp))
			return 1;
	}
	mp->dropped = 1;
	if (cfg.events_per_cpu) {
		__u32 packed = slot | mp->reason << 8 | (mp->level & (CGDROP_LEVELS - 1)) << 16;

		if (family == 4)
			sock_event4(ctx, packed);
		else
			sock_event6(ctx, packed);
	}
	if (cfg.modes & CGDROP_MODE_DRY_RUN)
		return 1;
	/* --reject-with: the errno the call fails with instead of EPERM (Linux 5.18). */
	if (cfg.reject_errno)
		bpf_set_retval(-(int)cfg.reject_errno);
	return 0;
}

static __always_inline int sock_addr_verdict(struct bpf_sock_addr *ctx, __u32 slot, __u8 family)
{
	struct decision m = {};
	struct counting k = {};
	int verdict;

	enter(&k, slot);
	m.level = k.level & (CGDROP_LEVELS - 1);
	verdict = sock_addr_decide(ctx, slot, family, &m);
	verdict = forget(verdict | m.dropped << 8 | m.found << 9, k.depth);
	count_run(&k, 1, 0, false, verdict & (1 << 8));
	if (verdict & (1 << 9))
		count_hit(m.level, k.shared);
	leave(&k);
	return verdict & 1;
}

SEC("cgroup/connect4")
int cgdrop_connect4(struct bpf_sock_addr *ctx)
{
	return sock_addr_verdict(ctx, CGDROP_STAT_CONNECT4, 4);
}

SEC("cgroup/connect6")
int cgdrop_connect6(struct bpf_sock_addr *ctx)
{
	return sock_addr_verdict(ctx, CGDROP_STAT_CONNECT6, 6);
}

SEC("cgroup/sendmsg4")
int cgdrop_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_addr_verdict(ctx, CGDROP_STAT_SENDMSG4, 4);
}

SEC("cgroup/sendmsg6")
int cgdrop_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_addr_verdict(ctx, CGDROP_STAT_SENDMSG6, 6);
}

/*
 * Names the creator of every socket made in the cgroup (attached only when
 * events are on), so that drops of sockets that never connect or send to an
 * address (a UDP server's replies, a bound receiver's datagrams) name it.
 * Never refuses a socket.
 */
SEC("cgroup/sock_create")
int cgdrop_sock_create(struct bpf_sock *sk)
{
	record_owner(sk);
	return 1;
}

/* Only in the sockets object (see the top of this file). */
#ifdef CGDROP_SOCKETS
/*
 * Sockets made before the policy (or brought into the cgroup): the `iter/tcp`
 * and `iter/udp` programs find the connected sockets of the cgroup and its
 * descendants that the policy would drop, write a cgdrop_sock_rec for each,
 * and with iter_kill close them with bpf_sock_destroy (Linux 6.5). They are
 * loaded ('?') only by a second instance of this object that shares the
 * policy's rule maps, never with the policy's programs: a kernel without
 * the kfunc must still load those.
 */
extern int bpf_sock_destroy(struct sock_common *sk) __ksym __weak;

/* The record being built (off the stack; its type reaches the skeleton this way). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgdrop_sock_rec);
} cgdrop_sock_rec SEC(".maps");

/* Set before the iterator instance is loaded (rodata: fixed for the load). */
const volatile __u64 iter_cgroup_id = 0;
const volatile __u32 iter_kill = 0;

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* Whether the socket's cgroup is iter_cgroup_id or below it. */
static __always_inline bool in_target_cgroup(struct sock *sk)
{
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);

	for (int i = 0; i < 32 && cg; i++) {
		if (BPF_CORE_READ(cg, kn, id) == iter_cgroup_id)
			return true;
		cg = (struct cgroup *)BPF_CORE_READ(cg, self.parent);
	}
	return false;
}

/* `skc` is the iterator's own (trusted) pointer, which bpf_sock_destroy takes; `sk` the same socket as a full socket. */
static __always_inline void judge_socket(struct seq_file *seq, struct sock_common *skc, struct sock *sk, __u8 proto)
{
	struct cgdrop_sock_rec *rec;
	struct cgdrop_owner *o;
	struct decision m = {};
	__u32 zero = 0;
	__u16 family = sk->__sk_common.skc_family;
	__u8 state = sk->__sk_common.skc_state;

	/* The interface of a connection's next packet is not known here. */
	if (!iter_cgroup_id || cfg.ifindex || !in_target_cgroup(sk))
		return;
	rec = bpf_map_lookup_elem(&cgdrop_sock_rec, &zero);
	if (!rec)
		return;
	__builtin_memset(rec, 0, sizeof(*rec));
	/* Only connections: a TCP listener or a closed socket, an unconnected UDP socket, has no peer. */
	if (state == TCP_LISTEN || state == TCP_CLOSE || state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return;
	rec->proto = proto;
	rec->state = state;
	rec->local_port = sk->__sk_common.skc_num;
	rec->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		__u32 l = sk->__sk_common.skc_rcv_saddr, r = sk->__sk_common.skc_daddr;

		if (!r)
			return;
		rec->family = 4;
		__builtin_memcpy(rec->local, &l, 4);
		__builtin_memcpy(rec->remote, &r, 4);
	} else if (family == AF_INET6) {
		rec->family = 6;
		BPF_CORE_READ_INTO(rec->local, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(rec->remote, sk, __sk_common.skc_v6_daddr);
	} else {
		return;
	}
	if (!rec->remote_port && proto == IPPROTO_UDP)
		return;
	/* What the skb programs judge: the port filter, then the remote address and port. */
	if (cfg.port && !in_port_range(rec->local_port) && !in_port_range(rec->remote_port))
		return;
	if (!policy_drops(rec->family, rec->remote, rec->remote_port, &m))
		return;
	o = bpf_sk_storage_get(&cgdrop_owners, sk, 0, iter_kill ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (o && (o->flags & CGDROP_OWNER_KNOWN)) {
		rec->owner_known = 1;
		rec->pid = o->tgid;
		rec->uid = o->uid;
		__builtin_memcpy(rec->comm, o->comm, sizeof(rec->comm));
	}
	if (iter_kill && !(cfg.modes & CGDROP_MODE_DRY_RUN)) {
		if (o)
			o->flags |= CGDROP_OWNER_CLOSING;
		rec->error = bpf_sock_destroy(skc);
		rec->closed = rec->error == 0;
	}
	bpf_seq_write(seq, rec, sizeof(*rec));
}

SEC("?iter/tcp")
int cgdrop_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	judge_socket(ctx->meta->seq, skc, (struct sock *)tp, IPPROTO_TCP);
	return 0;
}

SEC("?iter/udp")
int cgdrop_iter_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;

	if (!udp)
		return 0;
	judge_socket(ctx->meta->seq, (struct sock_common *)udp, (struct sock *)udp, IPPROTO_UDP);
	return 0;
}
#endif /* CGDROP_SOCKETS */

#ifndef CGDROP_NO_TEST_PROGRAMS
/*
 * Deliberately invalid: egress programs must return 0-3, so the verifier
 * rejects it. The '?' keeps libbpf from loading it, unless the environment
 * variable CGDROP_SELFTEST_REJECTED_PROGRAM asks for it: the tests use it to
 * check how cgdrop reports a verifier rejection.
 */
SEC("?cgroup_skb/egress")
int cgdrop_selftest(struct __sk_buff *skb)
{
	return 7;
}

/*
 * The floor of the benchmarks (bench/): a cgroup_skb program that only passes.
 * Never loaded by cgdrop itself ('?'). Both test programs are left out of
 * cgdrop-plain.bpf.o (build.rs), the object bpftool loads in the benchmarks:
 * its `prog loadall` cannot pin programs that were not loaded.
 */
SEC("?cgroup_skb/egress")
int cgdrop_floor(struct __sk_buff *skb)
{
	return 1;
}

/*
 * The floor of a sendmsg4 hook, for the benchmarks' pass-path CPU: what any
 * program there costs a sender (with cgdrop_floor on egress).
 */
SEC("?cgroup/sendmsg4")
int cgdrop_floor_sendmsg4(struct bpf_sock_addr *ctx)
{
	return 1;
}

/*
 * The floor plus one rule lookup (an LPM trie lookup of 127.0.0.1, the
 * benchmarks' address, in the loaded object's trie): what a policy with rules
 * pays at least per packet, for the benchmarks' "where the time goes".
 */
SEC("?cgroup_skb/egress")
int cgdrop_floor_lookup(struct __sk_buff *skb)
{
	/*
	 * Filled field by field: an initializer with the address becomes an
	 * anonymous constant in .rodata, which would change the size of the
	 * pinned rodata map that `status` reads.
	 */
	struct cgdrop_key_v4 key = {};
	__u32 loopback = bpf_htonl(0x7f000001);

	key.prefixlen = CGDROP_PORT_BITS + 32;
	__builtin_memcpy(key.addr, &loopback, 4);
	return bpf_map_lookup_elem(&cgdrop_rules_v4, &key) ? 1 : 1;
}
#endif /* CGDROP_NO_TEST_PROGRAMS */

char LICENSE[] SEC("license") = "GPL";
