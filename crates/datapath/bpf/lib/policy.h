/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Policy enforcement points.
 *
 * PLEXUS_POLICY_ENFORCE says, per endpoint id, whether ingress and egress are default-deny.
 * PLEXUS_POLICY is one longest-prefix-match map for every endpoint: the key is the endpoint id,
 * the direction, the peer's identity, the protocol and the destination port, the last two
 * wildcarded by the prefix length. A packet is looked up with the peer's identity, then with
 * identity 0 (any peer); the control plane (src/policy.rs) compiles the rules so that the longest
 * match carries the verdict, deny winning over allow, and writes into each entry the kind of
 * match it is (POLICY_MATCH_*), which the policy verdict event of an allowed new connection
 * reports.
 *
 * CIDR rules match by address, whoever owns it. PLEXUS_POLICY_CIDR maps each prefix that a
 * resolved policy names to its node-local CIDR identity (the most specific prefix wins, as in the
 * LPM trie); the control plane writes a CIDR rule as entries for the identity of every named
 * prefix inside it. When the peer's address hits that map with an identity other than the
 * peer's, the packet is looked up with both identities: any deny drops, else any allow passes
 * (reporting the allowing entry's kind), else the direction's default (deny, when enforced).
 */
#ifndef PLEXUS_POLICY_H
#define PLEXUS_POLICY_H

#include "common.h"
#include "conntrack.h"
#include "trace.h"

#define POLICY_ALLOW 0
#define POLICY_DENY 1
/* policy_lookup only: no entry matched (the caller applies the default). */
#define POLICY_NONE 2

/* Bits of a policy key that are always matched: ep_id, dir, pad, identity. */
#define POLICY_FIXED_BITS 64
/* All bits of the key's data: the fixed ones, proto, pad2, dport. */
#define POLICY_FULL_BITS 96

struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 dir; /* DIR_INGRESS or DIR_EGRESS */
	__u8 pad;
	__u32 identity; /* the peer's, 0 = any */
	__u8 proto;
	__u8 pad2;
	__u16 dport; /* network order: its high bits come first in the prefix */
};

struct policy_value {
	__u8 deny;
	__u8 match; /* POLICY_MATCH_* of the entry's key (0 from agents before it was written) */
	__u8 pad[2];
};

/* What struct policy_enforce says of a direction. */
#define POLICY_ENFORCE_OFF 0 /* no policy: everything passes, no lookup */
#define POLICY_ENFORCE_DEFAULT_DENY 1 /* what no entry allows is dropped */
#define POLICY_ENFORCE_DENY_ONLY 2 /* not enforced, but deny entries apply */

struct policy_enforce {
	__u8 ingress; /* POLICY_ENFORCE_* */
	__u8 egress;
	__u16 pad;
};

struct policy_cidr_key {
	__u32 prefixlen;
	__u32 ipv4; /* network order */
};

struct policy_cidr_value {
	__u32 identity; /* node-local CIDR identity of the prefix */
};

_Static_assert(sizeof(struct policy_cidr_key) == 8, "policy_cidr_key layout");
_Static_assert(sizeof(struct policy_cidr_value) == 4, "policy_cidr_value layout");
_Static_assert(sizeof(struct policy_key) == 16, "policy_key layout");
_Static_assert(sizeof(struct policy_value) == 4, "policy_value layout");
_Static_assert(sizeof(struct policy_enforce) == 4, "policy_enforce layout");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_POLICY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct policy_enforce);
	__uint(max_entries, 65535);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_POLICY_ENFORCE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_cidr_key);
	__type(value, struct policy_cidr_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_POLICY_CIDR SEC(".maps");

/* The CIDR identity of the most specific policy prefix holding `ipv4`, 0 when none does. */
static __always_inline __u32 policy_cidr_identity(__u32 ipv4)
{
	struct policy_cidr_key key = { .prefixlen = 32, .ipv4 = ipv4 };
	struct policy_cidr_value *v = bpf_map_lookup_elem(&PLEXUS_POLICY_CIDR, &key);

	return v ? v->identity : 0;
}

/* How the endpoint's traffic in `dir` is subject to policy (POLICY_ENFORCE_*). */
static __always_inline int policy_enforced(__u16 ep_id, __u8 dir)
{
	__u32 key = ep_id;
	struct policy_enforce *e = bpf_map_lookup_elem(&PLEXUS_POLICY_ENFORCE, &key);

	if (!e)
		return 0;
	return dir == DIR_INGRESS ? e->ingress : e->egress;
}

/*
 * The verdict of the longest match for the packet (POLICY_NONE when nothing matches), and in
 * `match` the kind of an allowing match (POLICY_MATCH_*: written by the control plane into the
 * entry; an entry without it counts as L3-only when the peer's identity matched, allow-all
 * otherwise).
 */
static __always_inline int policy_lookup(__u16 ep_id, __u8 dir, __u32 identity,
					 const struct pkt_info *pi, __u8 *match)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_BITS,
		.ep_id = ep_id,
		.dir = dir,
		.identity = identity,
		.proto = pi->proto,
		.dport = bpf_htons(pi->dport),
	};
	struct policy_value *v;
	__u8 fallback = POLICY_MATCH_L3_ONLY;

	/* ICMP has no port: its type and code are not policy ports. */
	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP && pi->proto != IPPROTO_SCTP)
		key.dport = 0;
	v = bpf_map_lookup_elem(&PLEXUS_POLICY, &key);
	if (!v) {
		key.identity = 0;
		fallback = POLICY_MATCH_ALL;
		v = bpf_map_lookup_elem(&PLEXUS_POLICY, &key);
	}
	if (!v)
		return POLICY_NONE;
	if (v->deny)
		return POLICY_DENY;
	*match = v->match ? v->match : fallback;
	return POLICY_ALLOW;
}

/*
 * The verdict of the entries for a packet whose peer has identity `peer` and address
 * `peer_addr`: the peer's identity, and the CIDR identity of its address when that is another
 * one (an address inside a policy's CIDR that a pod, a node or a remote cluster owns). Deny
 * wins; otherwise an allow of either passes; otherwise POLICY_NONE (the caller's default).
 */
static __always_inline int policy_decide(__u16 ep_id, __u8 dir, __u32 peer, __u32 peer_addr,
					 const struct pkt_info *pi, __u8 *match)
{
	int verdict = policy_lookup(ep_id, dir, peer, pi, match);
	__u32 cidr_identity;
	__u8 cidr_match = 0;
	int cidr_verdict;

	if (verdict == POLICY_DENY)
		return POLICY_DENY;
	cidr_identity = policy_cidr_identity(peer_addr);
	if (cidr_identity && cidr_identity != peer) {
		cidr_verdict = policy_lookup(ep_id, dir, cidr_identity, pi, &cidr_match);
		if (cidr_verdict == POLICY_DENY)
			return POLICY_DENY;
		if (cidr_verdict == POLICY_ALLOW && verdict != POLICY_ALLOW) {
			verdict = POLICY_ALLOW;
			*match = cidr_match;
		}
	}
	return verdict;
}

/*
 * Connections through policy. Every TCP, UDP and ICMP flow leaving or entering an endpoint is
 * tracked, enforced or not, so that a policy added later recognises the replies of connections
 * that were established before it: a packet whose reverse was allowed in the other direction is
 * a reply and passes without a lookup. ICMP is tracked without type and code, so that an echo
 * reply matches its request.
 */
static __always_inline void policy_ct_key(struct ct_key *key, const struct pkt_info *pi,
					  int reverse, __u8 dir)
{
	__u16 sport = pi->sport, dport = pi->dport;

	if (pi->proto != IPPROTO_TCP && pi->proto != IPPROTO_UDP)
		sport = dport = 0;
	key->saddr = reverse ? pi->daddr : pi->saddr;
	key->daddr = reverse ? pi->saddr : pi->daddr;
	key->sport = bpf_htons(reverse ? dport : sport);
	key->dport = bpf_htons(reverse ? sport : dport);
	key->proto = pi->proto;
	key->dir = dir;
	key->pad = 0;
}

static __always_inline int policy_tracked(const struct pkt_info *pi)
{
	return pi->proto == IPPROTO_TCP || pi->proto == IPPROTO_UDP || pi->proto == IPPROTO_ICMP;
}

/* Whether the packet is a reply of a connection allowed in direction `other_dir`. */
static __always_inline int policy_is_reply(const struct pkt_info *pi, __u8 other_dir, __u64 now)
{
	struct ct_key key;
	struct ct_entry *e;

	policy_ct_key(&key, pi, 1, other_dir);
	e = ct_lookup(&key, now);
	if (!e)
		return 0;
	ct_refresh(e, 0, now);
	return 1;
}

/*
 * Records (or refreshes) an allowed connection in direction `dir`; a SYN starts it afresh.
 * Returns CT_STATE_ESTABLISHED for a live connection, CT_STATE_NEW for one recorded now.
 */
static __always_inline __u8 policy_track(const struct pkt_info *pi, __u8 dir, __u64 now)
{
	struct ct_key key;
	struct ct_entry *e, entry = {};

	policy_ct_key(&key, pi, 0, dir);
	e = bpf_map_lookup_elem(&PLEXUS_CT, &key);
	if (e && !tcp_is_syn(pi) && ct_is_live(e, pi->proto, now)) {
		ct_refresh(e, pi->tcp_flags, now);
		return CT_STATE_ESTABLISHED;
	}
	entry.last_seen_ns = now;
	entry.tcp_flags = pi->tcp_flags;
	bpf_map_update_elem(&PLEXUS_CT, &key, &entry, BPF_ANY);
	return CT_STATE_NEW;
}

/*
 * The policy check of endpoint `ep_id` in `dir` for a packet from `src_identity` to
 * `dst_identity`; `peer` is the other side's identity. Sets `ct_state` to what conntrack said of
 * the packet (CT_STATE_UNKNOWN for untracked protocols). A new connection (or, untracked, any
 * packet) that an enforced policy allowed is reported with a policy verdict event; a denial is
 * the caller's drop.
 */
static __always_inline int policy_check(struct __sk_buff *skb, __u16 ep_id, __u8 dir, __u32 peer,
					__u32 src_identity, __u32 dst_identity,
					const struct pkt_info *pi, __u8 *ct_state)
{
	__u8 track_dir = dir == DIR_EGRESS ? CT_DIR_POLICY_OUT : CT_DIR_POLICY_IN;
	__u8 reply_dir = dir == DIR_EGRESS ? CT_DIR_POLICY_IN : CT_DIR_POLICY_OUT;
	int tracked = policy_tracked(pi);
	__u8 match = 0, mode;
	__u64 now = 0;
	int verdict;

	*ct_state = CT_STATE_UNKNOWN;
	if (tracked) {
		now = bpf_ktime_get_ns();
		if (policy_is_reply(pi, reply_dir, now)) {
			*ct_state = CT_STATE_REPLY;
			return POLICY_ALLOW;
		}
	}
	mode = policy_enforced(ep_id, dir);
	if (mode != POLICY_ENFORCE_OFF) {
		verdict = policy_decide(ep_id, dir, peer,
					dir == DIR_EGRESS ? pi->daddr : pi->saddr, pi, &match);
		if (verdict == POLICY_DENY ||
		    (verdict == POLICY_NONE && mode == POLICY_ENFORCE_DEFAULT_DENY))
			return POLICY_DENY;
	}
	if (tracked) {
		*ct_state = policy_track(pi, track_dir, now);
		if (*ct_state != CT_STATE_NEW)
			return POLICY_ALLOW;
	}
	/* `match` is set only when an enforced policy allowed: no policy, no verdict. */
	if (match)
		send_policy_verdict(skb, dir, match, *ct_state, ep_id, src_identity, dst_identity,
				    pi);
	return POLICY_ALLOW;
}

static __always_inline int policy_egress(struct __sk_buff *skb, const struct endpoint_info *src,
					 __u32 dst_identity, const struct pkt_info *pi,
					 __u8 *ct_state)
{
	return policy_check(skb, src->ep_id, DIR_EGRESS, dst_identity,
			    src->sec_identity & IDENTITY_MASK, dst_identity, pi, ct_state);
}

static __always_inline int policy_ingress(struct __sk_buff *skb, const struct endpoint_info *dst,
					  __u32 src_identity, const struct pkt_info *pi,
					  __u8 *ct_state)
{
	return policy_check(skb, dst->ep_id, DIR_INGRESS, src_identity, src_identity,
			    dst->sec_identity, pi, ct_state);
}

#endif
