/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What the BPF programs and the Rust loader share. Constants are enums, not
 * #defines, so that they reach Rust through the skeleton's BTF-generated types.
 */
#ifndef __CGDROP_H
#define __CGDROP_H

/* Slots of the per-CPU `stats` array: one per hook. */
enum cgdrop_stat_slot {
	CGDROP_STAT_INGRESS = 0,
	CGDROP_STAT_EGRESS = 1,
	CGDROP_STAT_CONNECT4 = 2,
	CGDROP_STAT_CONNECT6 = 3,
	CGDROP_STAT_SENDMSG4 = 4,
	CGDROP_STAT_SENDMSG6 = 5,
	CGDROP_STAT_SLOTS = 6,
};

/*
 * The counters of one hook at one nesting level. For the skb hooks: packets
 * and bytes seen and dropped. For the connect/sendmsg hooks: `packets`
 * counts attempts and `dropped_packets` rejections; the byte fields stay 0.
 */
struct cgdrop_counters {
	__u64 packets;
	__u64 bytes;
	__u64 dropped_packets;
	__u64 dropped_bytes;
};

/*
 * One slot of the per-CPU `stats` array, on one CPU. A run of a hook can be
 * interrupted on its CPU by another run of the same hook (a softirq sending
 * a TCP ACK while a process sends), so a plain read-modify-write of one
 * counter could lose a count. Instead each run counts at its own nesting
 * level: `depth` is how many runs of this hook are under way on this CPU,
 * raised on entry and put back on exit. Interrupts nest (the interrupting
 * run ends before the interrupted one goes on), so two runs under way at
 * once never share a level, and plain adds are exact. Userspace sums the
 * levels. See enter() in cgdrop.bpf.c for the kernels where a task can be
 * preempted inside the program.
 */
struct cgdrop_stat_cpu {
	__u32 depth;
	__u32 pad;
	struct cgdrop_counters level[4 /* CGDROP_LEVELS */];
};

/* Bits of the `cfg_directions` rodata value. */
enum cgdrop_direction {
	CGDROP_DIR_INGRESS = 1,
	CGDROP_DIR_EGRESS = 2,
};

/* Bits of the `cfg_modes` rodata value. */
enum cgdrop_mode {
	/* No connect/sendmsg rejection; egress drops look like packet loss to UDP. */
	CGDROP_MODE_SILENT = 1,
	/* Count what would be dropped; drop nothing. */
	CGDROP_MODE_DRY_RUN = 2,
	/* Drop inbound TCP connection requests (SYN without ACK) to the cgroup's sockets. */
	CGDROP_MODE_NO_NEW_INBOUND = 4,
};

/* What a rule does to the traffic it matches. */
enum cgdrop_action {
	CGDROP_ACTION_ALLOW = 1,
	CGDROP_ACTION_DENY = 2,
};

/* Bits of a rule's `origin`. */
enum cgdrop_rule_origin {
	/* Added to a pinned policy with `cgdrop rule add`: `pin --replace` carries it over. */
	CGDROP_RULE_LIVE = 1,
};

/* Limits both sides must agree on. */
enum cgdrop_limits {
	/* Rules per address family: the size of each LPM trie. */
	CGDROP_MAX_RULES = 1 << 20,
	/* The port part of a trie key, in bits. */
	CGDROP_PORT_BITS = 16,
	/* Longest cgroup path a pinned policy records (NUL included). */
	CGDROP_PATH_MAX = 4080,
	/* Nesting levels counted apart (struct cgdrop_stat_cpu): task, softirq, and two spare. */
	CGDROP_LEVELS = 4,
};

/*
 * The sieve: one bit per group of addresses, set (by userspace, before the
 * rule is written) for every group a rule covers, so that a packet whose
 * group has no bit set skips the rule lookups (a trie lookup is a call, the
 * largest part of the pass path's cost). Bits are never cleared while the
 * policy lives: a bit left by a deleted rule only costs that lookup again.
 * Words of the `cgdrop_sieve` array, in three parts:
 *   IPv4: the address's top 24 bits (a /24 per bit);
 *   IPv6 short: the top 20 bits, set by rules with prefixes under /64;
 *   IPv6 long: a hash of the top 64 bits, set by rules of /64 and longer.
 */
enum cgdrop_sieve {
	CGDROP_SIEVE_V4_BITS = 24,
	CGDROP_SIEVE_V6_SHORT_BITS = 20,
	CGDROP_SIEVE_V6_LONG_BITS = 22,
	/* Rules of this prefix length and longer go to the IPv6 long part. */
	CGDROP_SIEVE_V6_LONG_PREFIX = 64,
	CGDROP_SIEVE_V4_WORD = 0,
	CGDROP_SIEVE_V6_SHORT_WORD = 1 << (24 - 6),
	CGDROP_SIEVE_V6_LONG_WORD = (1 << (24 - 6)) + (1 << (20 - 6)),
	CGDROP_SIEVE_WORDS = (1 << (24 - 6)) + (1 << (20 - 6)) + (1 << (22 - 6)),
};

/*
 * The layout of what a pinned policy keeps (maps, their value types, this
 * header's structs). Raised whenever one of them changes, so that a policy
 * pinned by another cgdrop is refused with a message instead of misread.
 */
enum cgdrop_layout {
	CGDROP_LAYOUT_VERSION = 7,
};

/*
 * The configuration fixed for one load: the one rodata variable `cfg`,
 * written by the loader before the programs are verified (so the verifier
 * prunes what the policy does not use) and read back from a pinned policy's
 * `rodata` map.
 */
struct cgdrop_config {
	/* Interface index a packet must use to be in scope; 0 = every interface. */
	__u32 ifindex;
	/* TCP/UDP port (host order) a packet's source or destination must have; 0 = any. */
	__u16 port;
	/* The last port of the range that starts at `port`. */
	__u16 port_hi;
	/* CGDROP_DIR_* bits: the directions whose traffic is dropped. */
	enum cgdrop_direction directions;
	/* CGDROP_MODE_* bits. */
	enum cgdrop_mode modes;
	/*
	 * With `ifindex`: the network namespace (its cookie) where the interface
	 * was named; an interface of the same number elsewhere is another one.
	 * 0 = not known (kernels before 5.14): the number alone decides.
	 */
	__u64 netns_cookie;
	/* The interface's name, for `status` (the programs never read it). */
	char iface[16];
	/* Drop and reject events each CPU may emit per second; 0 = no events. */
	__u32 events_per_cpu;
	/* The errno a rejected connect()/sendmsg() gets; 0 = EPERM (the kernel's own). */
	__u32 reject_errno;
	/*
	 * 1: the kernel can preempt a task inside a BPF program (preempt=full,
	 * lazy, RT, or not known): a preempting run could take the level of a
	 * preempted one, so counters use atomic adds instead.
	 */
	__u32 count_atomic;
	/*
	 * Entries of the `cgdrop_hosts_v4` table (struct cgdrop_host); 0 = the
	 * policy has none (fewer such rules than the loader puts in a table).
	 */
	__u32 hosts_v4;
};

/* What happened to the traffic an event is about. */
enum cgdrop_verdict {
	CGDROP_VERDICT_DROPPED = 1,
	CGDROP_VERDICT_REJECTED = 2,
	/* --dry-run: counted, let through. */
	CGDROP_VERDICT_WOULD_DROP = 3,
	CGDROP_VERDICT_WOULD_REJECT = 4,
};

/* Why. */
enum cgdrop_reason {
	/* A deny rule matched (rule_* say which). */
	CGDROP_REASON_RULE = 1,
	/* No rule matched: the policy drops everything in scope. */
	CGDROP_REASON_DEFAULT = 2,
	/* The header chain or the expired rules could not be looked past: dropped undecided. */
	CGDROP_REASON_UNDECIDED = 3,
	/* --no-new-inbound: an inbound connection request. */
	CGDROP_REASON_NEW_INBOUND = 4,
};

/*
 * One drop or rejection, from the `events` ring buffer. `hook` is the stats
 * slot of the program; CGDROP_STAT_SLOTS marks a record that only says how
 * many events one CPU left out (`suppressed`) to stay within its budget.
 */
struct cgdrop_event {
	/* CLOCK_BOOTTIME ns. */
	__u64 time_ns;
	__u64 cgroup_id;
	__u64 rule_expires_ns;
	__u64 suppressed;
	/* The process (thread id, process id, uid); owner_known = 0: unknown. */
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	/* Packet length (skb hooks). */
	__u32 len;
	enum cgdrop_stat_slot hook;
	enum cgdrop_verdict verdict;
	enum cgdrop_reason reason;
	/* enum cgdrop_action of the matching rule; 0 = none. */
	__u32 rule_action;
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;
	__u16 remote_port;
	/* The matching rule: address bits of its prefix, its port (0 = any). */
	__u16 rule_prefix;
	__u16 rule_port;
	/* IPPROTO_*; 0 = unknown. */
	__u8 proto;
	/* 4 or 6; 0 = unknown. */
	__u8 family;
	__u8 owner_known;
	__u8 pad;
	__u32 pad2;
	char comm[16];
};

/*
 * Value of the per-CPU `rule_hits` map, keyed by a rule's `hit_key`: the
 * packets and calls the rule decided, per nesting level (as in
 * struct cgdrop_stat_cpu), and when it last did (CLOCK_BOOTTIME).
 */
struct cgdrop_hits {
	__u64 hits[4 /* CGDROP_LEVELS */];
	__u64 last_ns;
};

/* Value of the per-CPU `event_budget` map: this CPU's current one-second window. */
struct cgdrop_budget {
	__u64 window_ns;
	__u64 sent;
	__u64 suppressed;
};

/* Value of the socket-local `owners` storage: who created or used the socket. */
struct cgdrop_owner {
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	/* CGDROP_OWNER_*: flags. */
	__u32 flags;
	char comm[16];
};

enum cgdrop_owner_flags {
	/* The pid/tgid/uid/comm fields are set. */
	CGDROP_OWNER_KNOWN = 1,
	/* cgdrop closes this socket (--kill-existing): its reset may leave. */
	CGDROP_OWNER_CLOSING = 2,
};

/*
 * One socket of the cgroup that the policy would drop, written by the
 * `iter/tcp` and `iter/udp` programs (`cgdrop status --sockets`,
 * `--kill-existing`).
 */
struct cgdrop_sock_rec {
	__u8 local[16];
	__u8 remote[16];
	__u32 pid;
	__u32 uid;
	char comm[16];
	__u16 local_port;
	__u16 remote_port;
	/* 4 or 6. */
	__u8 family;
	/* IPPROTO_TCP or IPPROTO_UDP. */
	__u8 proto;
	/* TCP_* state (UDP: 1 = connected). */
	__u8 state;
	/* 1: closed with bpf_sock_destroy. */
	__u8 closed;
	__u8 owner_known;
	__u8 pad[3];
	/* The error bpf_sock_destroy returned (0 = none). */
	__s32 error;
};

/*
 * Keys of the LPM tries `rules_v4` and `rules_v6`. The trie matches the bytes
 * after `prefixlen` from the first bit on: the port (network order; 0 = any
 * port) is compared whole, then `prefixlen - 16` bits of the address. `pad`
 * keeps the size explicit and is always zero.
 */
struct cgdrop_key_v4 {
	__u32 prefixlen;
	__u16 port;
	__u8 addr[4];
	__u8 pad[2];
};

struct cgdrop_key_v6 {
	__u32 prefixlen;
	__u16 port;
	__u8 addr[16];
	__u8 pad[2];
};

/* Value of a rule in the tries. */
struct cgdrop_rule {
	/* CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) after which the rule no longer matches; 0 = never. */
	__u64 expires_ns;
	enum cgdrop_action action;
	/* The key's prefixlen, so that an expired rule can be looked past. */
	__u32 prefixlen;
	/* CGDROP_RULE_* bits; the programs never read it. */
	enum cgdrop_rule_origin origin;
	__u32 pad;
	/*
	 * The key of the rule's `rule_hits` entry: a hash of its trie key, made
	 * by userspace (the programs only copy it; a rule written again keeps it).
	 */
	__u64 hit_key;
};

/*
 * One IPv4 host rule (a /32 with no port and no ttl) of the `cgdrop_hosts_v4`
 * table. A policy loaded with 4,096 such rules or more (HOST_TABLE_MIN in
 * src/kernel/config.rs) keeps
 * them there instead of in the trie: the table is written at once through
 * mmap before the programs are attached (a trie insert costs ~1.3 µs here, a
 * million of them 1.4 s), sorted by address, and searched by halves. Its
 * set of addresses never changes afterwards: a rule of the table that is
 * deleted gets `action` 0 (the trie may then hold one for the address), one
 * written again gets its new action in place.
 */
struct cgdrop_host {
	/* Host order: the table is sorted by it. 255.255.255.255 marks the unused tail. */
	__u32 addr;
	/* enum cgdrop_action; 0 = deleted. */
	__u32 action;
	/* enum cgdrop_rule_origin bits (as struct cgdrop_rule). */
	__u32 origin;
	__u32 pad;
	/* As struct cgdrop_rule's. */
	__u64 hit_key;
};

enum cgdrop_host_table {
	/* Halvings of a search: the table holds at most CGDROP_MAX_RULES (2^20) entries. */
	CGDROP_HOST_STEPS = 21,
};

/*
 * Value of the one-entry `info` map. The programs never read it: a pinned
 * policy keeps there the cgroup it was made for, so that `status` and
 * `unpin` can name it after the cgroup itself is gone.
 */
struct cgdrop_info {
	__u64 cgroup_id;
	/* CLOCK_REALTIME seconds when the policy was pinned (shown as a date). */
	__u64 pinned_at;
	/* CLOCK_BOOTTIME ns when it was pinned (its age, whatever the wall clock does). */
	__u64 pinned_boot_ns;
	/* CLOCK_REALTIME seconds of the first pin; `pinned_at` is then the last replacement. */
	__u64 first_pinned_at;
	/* CGDROP_LAYOUT_VERSION of the cgdrop that pinned it. */
	enum cgdrop_layout layout;
	/* CGDROP_STAT_SLOTS, CGDROP_MAX_RULES, CGDROP_SIEVE_WORDS of that cgdrop (checked with the layout). */
	enum cgdrop_stat_slot stat_slots;
	enum cgdrop_limits max_rules;
	enum cgdrop_sieve sieve_words;
	char cgroup_path[CGDROP_PATH_MAX];
	/* The target as the user gave it ("unit nginx.service", "pid 42"; "" = the path). */
	char target[256];
	/* The name of the `cgdrop apply` policy that pinned it; "" = pinned by hand. */
	char applied_as[64];
};

#endif /* __CGDROP_H */
