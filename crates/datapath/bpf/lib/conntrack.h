/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Connection tracking in PLEXUS_CT (an LRU hash). An entry is keyed by a packet's tuple and a
 * direction; it is live while the time since its last packet is within its lifetime, which
 * depends on the protocol and the TCP flags seen. An expired entry counts as absent (the LRU
 * reclaims it when the map fills). Service load balancing uses it today; policy can use the
 * same entries (directions 3 and 4 are reserved for it).
 */
#ifndef PLEXUS_CONNTRACK_H
#define PLEXUS_CONNTRACK_H

#include "maps.h"

#define NSEC_PER_SEC 1000000000ull
/* An established TCP connection may stay idle this long. */
#define CT_LIFETIME_TCP (6ull * 3600 * NSEC_PER_SEC)
/* A connection not established yet (SYN seen, no ACK), or closing (FIN or RST seen). */
#define CT_LIFETIME_TCP_SYN (60ull * NSEC_PER_SEC)
#define CT_LIFETIME_TCP_CLOSE (60ull * NSEC_PER_SEC)
/* UDP and everything else. */
#define CT_LIFETIME_NONTCP (60ull * NSEC_PER_SEC)
/* The last-seen time is written at most this often, to spare the cache line. */
#define CT_REFRESH_INTERVAL (1ull * NSEC_PER_SEC)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline __u64 ct_lifetime(__u8 proto, __u8 tcp_flags_seen)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (tcp_flags_seen & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return CT_LIFETIME_TCP_CLOSE;
	if (tcp_flags_seen & TCP_FLAG_ACK)
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_TCP_SYN;
}

/* A TCP segment that opens a connection: SYN without ACK. */
static __always_inline int tcp_is_syn(const struct pkt_info *pi)
{
	return pi->proto == IPPROTO_TCP &&
	       (pi->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void ct_key_of(struct ct_key *key, const struct pkt_info *pi, __u8 dir)
{
	key->saddr = pi->saddr;
	key->daddr = pi->daddr;
	key->sport = bpf_htons(pi->sport);
	key->dport = bpf_htons(pi->dport);
	key->proto = pi->proto;
	key->dir = dir;
	key->pad = 0;
}

static __always_inline int ct_is_live(const struct ct_entry *e, __u8 proto, __u64 now)
{
	return now - e->last_seen_ns <= ct_lifetime(proto, e->tcp_flags);
}

/* The live entry for `key`, or NULL when there is none or it has expired. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *key, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&PLEXUS_CT, key);

	if (!e || !ct_is_live(e, key->proto, now))
		return 0;
	return e;
}

/* Records one more packet of the connection on its (live) entry. */
static __always_inline void ct_refresh(struct ct_entry *e, __u8 tcp_flags, __u64 now)
{
	if ((e->tcp_flags | tcp_flags) != e->tcp_flags)
		e->tcp_flags |= tcp_flags;
	if (now - e->last_seen_ns > CT_REFRESH_INTERVAL)
		e->last_seen_ns = now;
}

#endif
