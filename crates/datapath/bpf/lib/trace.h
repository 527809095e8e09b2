/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Events into the PLEXUS_EVENTS ring buffer (trace, drop, translation, policy verdict), the
 * count of those lost to a full buffer, and the drop path itself.
 */
#ifndef PLEXUS_TRACE_H
#define PLEXUS_TRACE_H

#include "maps.h"
#include "metrics.h"

static __always_inline void event_init(struct event *ev, struct __sk_buff *skb, __u8 type,
				       __u8 subtype, __u8 dir, __u8 ct_state, __u16 ep_id,
				       __u32 src_identity, __u32 dst_identity,
				       const struct pkt_info *pi)
{
	ev->type = type;
	ev->subtype = subtype;
	ev->ep_id = ep_id;
	ev->src_identity = src_identity;
	ev->dst_identity = dst_identity;
	ev->ct_state = ct_state;
	ev->dir = dir;
	ev->ifindex = skb->ifindex;
	ev->len = skb->len;
	ev->flow = bpf_get_hash_recalc(skb);
	ev->ktime_ns = bpf_ktime_get_ns();
	if (pi) {
		ev->saddr = pi->saddr;
		ev->daddr = pi->daddr;
		ev->sport = pi->sport;
		ev->dport = pi->dport;
		ev->proto = pi->proto;
		ev->tcp_flags = pi->tcp_flags;
	}
}

/*
 * The reader is woken only once this much is waiting. A wakeup per event cost the sending CPU an
 * irq_work and the reader a context switch for every traced packet, in the critical path of
 * every connection (its SYN and SYN-ACK are traced on both veths). The reader polls at least
 * every 100 ms, so an event is read within that; a busy ring wakes it long before it fills
 * (1 MiB, 16 times this).
 */
#define EVENTS_WAKEUP_BYTES (64 * 1024)

/*
 * A full ring buffer loses the event, never the packet; the loss is counted per CPU so that the
 * agent can report it (the reader sums the CPUs).
 */
static __always_inline void event_output(const struct event *ev)
{
	__u64 flags = bpf_ringbuf_query(&PLEXUS_EVENTS, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES
			      ? BPF_RB_FORCE_WAKEUP
			      : BPF_RB_NO_WAKEUP;
	__u32 zero = 0;
	__u64 *lost;

	if (bpf_ringbuf_output(&PLEXUS_EVENTS, (void *)ev, sizeof(*ev), flags) == 0)
		return;
	lost = bpf_map_lookup_elem(&PLEXUS_EVENTS_LOST, &zero);
	if (lost)
		*lost += 1;
}

/* TCP flags that open, close or reset a connection. */
#define TRACE_TCP_FLAGS 0x07 /* FIN | SYN | RST */

/* The direction, seen from the endpoint, of a packet observed at `obs_point`. */
static __always_inline __u8 obs_dir(__u8 obs_point)
{
	return obs_point == OBS_TO_ENDPOINT || obs_point == OBS_FROM_OVERLAY ? DIR_INGRESS
									       : DIR_EGRESS;
}

/*
 * Trace events are aggregated like Cilium's monitor aggregation: a TCP segment is reported only
 * when it carries SYN, FIN or RST, so a bulk transfer costs no event per packet; other protocols
 * are reported packet by packet. `ct_state` is what conntrack said of the packet on this path.
 */
static __always_inline void send_trace(struct __sk_buff *skb, __u8 obs_point, __u8 ct_state,
				       __u16 ep_id, __u32 src_identity, __u32 dst_identity,
				       const struct pkt_info *pi)
{
	struct event ev = {};

	if (pi && pi->proto == IPPROTO_TCP && !(pi->tcp_flags & TRACE_TCP_FLAGS))
		return;
	event_init(&ev, skb, EVENT_TRACE, obs_point, obs_dir(obs_point), ct_state, ep_id,
		   src_identity, dst_identity, pi);
	event_output(&ev);
}

/*
 * A new connection to a service frontend, translated: `pi` is the packet as translated (its
 * destination the backend), `client` the source as the client sent it (it differs from pi's
 * only for a pod reaching itself), `frontend`/`frontend_port` the destination as it was sent.
 */
static __always_inline void send_translation(struct __sk_buff *skb, __u16 ep_id,
					     __u32 src_identity, __u32 dst_identity,
					     const struct pkt_info *pi, __be32 client,
					     __be32 frontend, __u16 frontend_port)
{
	struct event ev = {};

	event_init(&ev, skb, EVENT_TRANSLATION, 0, DIR_EGRESS, CT_STATE_NEW, ep_id, src_identity,
		   dst_identity, pi);
	ev.saddr = client;
	ev.orig_daddr = frontend;
	ev.orig_dport = frontend_port;
	event_output(&ev);
}

/* Policy allowed a new connection of endpoint `ep_id` in `dir`, by a match of kind `match`. */
static __always_inline void send_policy_verdict(struct __sk_buff *skb, __u8 dir, __u8 match,
						__u8 ct_state, __u16 ep_id, __u32 src_identity,
						__u32 dst_identity, const struct pkt_info *pi)
{
	struct event ev = {};

	event_init(&ev, skb, EVENT_POLICY_VERDICT, match, dir, ct_state, ep_id, src_identity,
		   dst_identity, pi);
	event_output(&ev);
}

/* Count, report and drop. Returns the verdict to hand back to tc. */
static __always_inline int send_drop(struct __sk_buff *skb, __u8 reason, __u8 dir, __u16 ep_id,
				     __u32 src_identity, __u32 dst_identity,
				     const struct pkt_info *pi)
{
	struct event ev = {};

	count(reason, dir, skb->len);
	event_init(&ev, skb, EVENT_DROP, reason, dir, CT_STATE_UNKNOWN, ep_id, src_identity,
		   dst_identity, pi);
	event_output(&ev);
	return TC_ACT_SHOT;
}

#endif
