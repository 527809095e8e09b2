/* SPDX-License-Identifier: Apache-2.0 */
/* Trace and drop events into the PLEXUS_EVENTS ring buffer, and the drop path itself. */
#ifndef PLEXUS_TRACE_H
#define PLEXUS_TRACE_H

#include "maps.h"
#include "metrics.h"

static __always_inline void emit_event(struct __sk_buff *skb, __u8 type, __u8 subtype, __u16 ep_id,
				       __u32 src_identity, __u32 dst_identity,
				       const struct pkt_info *pi)
{
	struct event ev = {
		.type = type,
		.subtype = subtype,
		.ep_id = ep_id,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
		.ifindex = skb->ifindex,
		.len = skb->len,
		.flow = bpf_get_hash_recalc(skb),
		.ktime_ns = bpf_ktime_get_ns(),
	};

	if (pi) {
		ev.saddr = pi->saddr;
		ev.daddr = pi->daddr;
		ev.sport = pi->sport;
		ev.dport = pi->dport;
		ev.proto = pi->proto;
		ev.tcp_flags = pi->tcp_flags;
	}
	/* A full ring buffer loses the event, never the packet. */
	bpf_ringbuf_output(&PLEXUS_EVENTS, &ev, sizeof(ev), 0);
}

/* TCP flags that open, close or reset a connection. */
#define TRACE_TCP_FLAGS 0x07 /* FIN | SYN | RST */

/*
 * Trace events are aggregated like Cilium's monitor aggregation: a TCP segment is reported only
 * when it carries SYN, FIN or RST, so a bulk transfer costs no event per packet; other protocols
 * are reported packet by packet.
 */
static __always_inline void send_trace(struct __sk_buff *skb, __u8 obs_point, __u16 ep_id,
				       __u32 src_identity, __u32 dst_identity,
				       const struct pkt_info *pi)
{
	if (pi && pi->proto == IPPROTO_TCP && !(pi->tcp_flags & TRACE_TCP_FLAGS))
		return;
	emit_event(skb, EVENT_TRACE, obs_point, ep_id, src_identity, dst_identity, pi);
}

/* Count, report and drop. Returns the verdict to hand back to tc. */
static __always_inline int send_drop(struct __sk_buff *skb, __u8 reason, __u8 dir, __u16 ep_id,
				     __u32 src_identity, __u32 dst_identity,
				     const struct pkt_info *pi)
{
	count(reason, dir, skb->len);
	emit_event(skb, EVENT_DROP, reason, ep_id, src_identity, dst_identity, pi);
	return TC_ACT_SHOT;
}

#endif
