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
 * One slot of `stats`. For the skb hooks: packets and bytes seen and dropped.
 * For the connect/sendmsg hooks: `packets` counts attempts and
 * `dropped_packets` rejections; the byte fields stay 0.
 */
struct cgdrop_counters {
	__u64 packets;
	__u64 bytes;
	__u64 dropped_packets;
	__u64 dropped_bytes;
};

/* Bits of the `cfg_directions` rodata value. */
enum cgdrop_direction {
	CGDROP_DIR_INGRESS = 1,
	CGDROP_DIR_EGRESS = 2,
};

#endif /* __CGDROP_H */
