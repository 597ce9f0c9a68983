// SPDX-License-Identifier: GPL-2.0-only
/*
 * cgdrop's BPF programs: verdicts on the packets and connect() calls of the
 * sockets of one cgroup (and its descendants), with per-CPU counters.
 *
 * Verdict order (../shared/DESIGN.md, "Policy semantics"): a packet that is
 * outside the configured interface or port is passed; everything in scope is
 * dropped. The connect hooks make a dropped TCP connection fail with EPERM at
 * once instead of hanging while the kernel retries the SYN.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
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
/* Extension headers walked at most; a packet with more has no ports for us. */
#define MAX_IPV6_EXT 4

/* Interface index a packet must use to be in scope; 0 = every interface. */
const volatile __u32 cfg_ifindex = 0;
/* TCP/UDP port (host order) a packet's source or destination must have; 0 = any. */
const volatile __u16 cfg_port = 0;
/*
 * CGDROP_DIR_* bits: the directions whose traffic is dropped. Typed as the
 * enum (a bit set of its values) so the enum reaches Rust through BTF.
 */
const volatile enum cgdrop_direction cfg_directions = 0;
/*
 * Not configuration: makes `enum cgdrop_stat_slot` part of the object's BTF so
 * that the Rust side gets the slot numbers from the generated types.
 */
const volatile enum cgdrop_stat_slot cfg_stat_slots = CGDROP_STAT_SLOTS;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CGDROP_STAT_SLOTS);
	__type(key, __u32);
	__type(value, struct cgdrop_counters);
} stats SEC(".maps");

/* What the verdict needs to know of a packet. Ports are in host order. */
struct pkt_info {
	__u16 sport;
	__u16 dport;
	__u8 has_ports;
};

static __always_inline struct cgdrop_counters *counters(__u32 slot)
{
	return bpf_map_lookup_elem(&stats, &slot);
}

/*
 * Atomic adds although the map is per-CPU: a softirq (a TCP ACK or
 * retransmission of another socket of the cgroup) can interrupt this program
 * on the same CPU, and a plain read-modify-write would then lose a count.
 */
static __always_inline void count(__u64 *field, __u64 n)
{
	__sync_fetch_and_add(field, n);
}

/*
 * Copies len bytes found off bytes after the network header into buf. Direct
 * packet access reads only the linear part of the skb; headers in paged data
 * (GRO'd or zero-copy packets) need bpf_skb_load_bytes.
 */
static __always_inline int read_hdr(struct __sk_buff *skb, __u32 off, void *buf, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (off <= 256 && data + off + len <= data_end) {
		__builtin_memcpy(buf, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, buf, len);
}

static __always_inline void read_ports(struct __sk_buff *skb, __u32 off, struct pkt_info *pkt)
{
	__be16 ports[2];

	if (read_hdr(skb, off, ports, sizeof(ports)))
		return;
	pkt->sport = bpf_ntohs(ports[0]);
	pkt->dport = bpf_ntohs(ports[1]);
	pkt->has_ports = 1;
}

static __always_inline void parse_ipv4(struct __sk_buff *skb, struct pkt_info *pkt)
{
	struct iphdr ip;

	if (read_hdr(skb, 0, &ip, sizeof(ip)))
		return;
	if (ip.frag_off & bpf_htons(IP_OFFSET_MASK))
		return;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return;
	if (ip.ihl < 5)
		return;
	read_ports(skb, ip.ihl * 4, pkt);
}

static __always_inline void parse_ipv6(struct __sk_buff *skb, struct pkt_info *pkt)
{
	struct ipv6hdr ip6;
	__u32 off = sizeof(ip6);
	__u8 next;

	if (read_hdr(skb, 0, &ip6, sizeof(ip6)))
		return;
	next = ip6.nexthdr;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		struct ipv6_opt_hdr ext;

		if (next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_FRAGMENT &&
		    next != NEXTHDR_DEST)
			break;
		if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)))
			return;
		if (next == NEXTHDR_FRAGMENT) {
			struct frag_hdr frag;

			if (bpf_skb_load_bytes(skb, off, &frag, sizeof(frag)))
				return;
			/* Only the first fragment carries the L4 header. */
			if (frag.frag_off & bpf_htons(0xfff8))
				return;
			off += sizeof(frag);
		} else {
			off += (ext.hdrlen + 1) * 8;
		}
		next = ext.nexthdr;
	}
	if (next != IPPROTO_TCP && next != IPPROTO_UDP)
		return;
	read_ports(skb, off, pkt);
}

/* Is this packet inside the interface and port filters of the policy? */
static __always_inline bool skb_in_scope(struct __sk_buff *skb)
{
	struct pkt_info pkt = {};

	if (cfg_ifindex && skb->ifindex != cfg_ifindex)
		return false;
	if (!cfg_port)
		return true;
	/* skb->protocol, not skb->family: the latter is the socket's family. */
	if (skb->protocol == bpf_htons(ETH_P_IP))
		parse_ipv4(skb, &pkt);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		parse_ipv6(skb, &pkt);
	/* Packets without ports (ICMP, non-first fragments, unparsable) never match a port. */
	if (!pkt.has_ports)
		return false;
	return pkt.sport == cfg_port || pkt.dport == cfg_port;
}

/* Returns 1 (pass) or 0 (drop), the cgroup_skb verdicts for both directions. */
static __always_inline int skb_verdict(struct __sk_buff *skb, __u32 slot, __u32 direction)
{
	struct cgdrop_counters *c = counters(slot);
	/* A GSO packet stands for gso_segs packets on the wire. */
	__u64 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 len = skb->len;

	if (c) {
		count(&c->packets, segs);
		count(&c->bytes, len);
	}
	if (!(cfg_directions & direction) || !skb_in_scope(skb))
		return 1;
	if (c) {
		count(&c->dropped_packets, segs);
		count(&c->dropped_bytes, len);
	}
	return 0;
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
 * Returns 1 (allow) or 0 (connect() fails with EPERM). Rejects what the skb
 * programs would drop: a TCP handshake fails if either direction is dropped;
 * a UDP connect() sends nothing, so it is rejected only when egress is.
 */
static __always_inline int connect_verdict(struct bpf_sock_addr *ctx, __u32 slot)
{
	struct cgdrop_counters *c = counters(slot);
	__u16 remote_port;

	if (c)
		count(&c->packets, 1);
	/* The outgoing interface is not known at connect() time: never reject then. */
	if (cfg_ifindex || !cfg_directions)
		return 1;
	if (ctx->type != SOCK_STREAM && !(cfg_directions & CGDROP_DIR_EGRESS))
		return 1;
	if (cfg_port) {
		if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
			return 1;
		remote_port = bpf_ntohs((__u16)ctx->user_port);
		/* A socket bound to the filtered port sends from it. */
		if (remote_port != cfg_port && ctx->sk->src_port != cfg_port)
			return 1;
	}
	if (c)
		count(&c->dropped_packets, 1);
	return 0;
}

SEC("cgroup/connect4")
int cgdrop_connect4(struct bpf_sock_addr *ctx)
{
	return connect_verdict(ctx, CGDROP_STAT_CONNECT4);
}

SEC("cgroup/connect6")
int cgdrop_connect6(struct bpf_sock_addr *ctx)
{
	return connect_verdict(ctx, CGDROP_STAT_CONNECT6);
}

char LICENSE[] SEC("license") = "GPL";
