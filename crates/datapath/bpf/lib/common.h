/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Structures shared with the Rust side (crates/datapath/src/abi.rs).
 * Every change here is a change of the pinned maps' layout: keep both sides in step
 * and keep the reserved fields so that additions do not change sizes.
 */
#ifndef PLEXUS_COMMON_H
#define PLEXUS_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Reserved identities (same numbers as Cilium's). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* Identities and VNIs are 24 bits wide. */
#define IDENTITY_MASK 0x00FFFFFFu

/* skb->mark carries the source identity between programs: magic in the top byte. */
#define MARK_MAGIC_IDENTITY 0xA5000000u
/* The same, for a reply whose policy was settled before delivery (a pod's reply to itself). */
#define MARK_MAGIC_REPLY 0xA6000000u
#define MARK_MAGIC_MASK 0xFF000000u

/* node_config.routing_mode */
#define ROUTING_TUNNEL 0
#define ROUTING_NATIVE 1

/* Metric directions. */
#define DIR_INGRESS 1 /* towards a pod */
#define DIR_EGRESS 2  /* leaving a pod */

/* Event types. */
#define EVENT_TRACE 1
#define EVENT_DROP 2
#define EVENT_TRANSLATION 3    /* the load balancer translated a new connection (lib/lb.h) */
#define EVENT_POLICY_VERDICT 4 /* policy allowed a new connection (lib/policy.h) */

/* event.ct_state: the connection state of the packet (Cilium's trace reasons). */
#define CT_STATE_NEW 0
#define CT_STATE_ESTABLISHED 1
#define CT_STATE_REPLY 2
#define CT_STATE_RELATED 3
#define CT_STATE_UNKNOWN 5 /* no conntrack lookup on this path */

/* Policy match kinds (Cilium's PolicyMatchType numbers): the subtype of a policy verdict. */
#define POLICY_MATCH_L3_ONLY 1 /* the peer's identity, any port */
#define POLICY_MATCH_L3_L4 2   /* the peer's identity and the protocol/port */
#define POLICY_MATCH_L4_ONLY 3 /* any peer, the protocol/port */
#define POLICY_MATCH_ALL 4     /* any peer, any port */
#define POLICY_MATCH_L3_PROTO 5   /* the peer's identity and the protocol, any port */
#define POLICY_MATCH_PROTO_ONLY 6 /* any peer, the protocol, any port */

/* Trace observation points. */
#define OBS_FROM_ENDPOINT 1
#define OBS_TO_ENDPOINT 2
#define OBS_FROM_OVERLAY 3
#define OBS_TO_OVERLAY 4
#define OBS_TO_STACK 5

/* Metric reason 0 is "forwarded"; every other reason is a drop. */
#define REASON_FORWARDED 0
#define DROP_INVALID_PACKET 1
#define DROP_UNKNOWN_SOURCE 2
#define DROP_NO_ENDPOINT 3
#define DROP_UNSUPPORTED_L3 4
#define DROP_NO_TUNNEL_KEY 5
#define DROP_POLICY_DENIED 6
#define DROP_SOURCE_MISMATCH 7
#define DROP_UNSUPPORTED_ARP 8
#define DROP_NO_CONFIG 9
#define DROP_TUNNEL_KEY_FAILED 10
#define DROP_NO_SERVICE_BACKEND 11
#define DROP_UNENCRYPTED 12 /* strict mode: no WireGuard peer for the destination node yet */

/* PLEXUS_IPCACHE key: an LPM trie key, prefixlen counts the bits of ipv4. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 ipv4; /* network order */
};

struct ipcache_value {
	__u32 sec_identity;
	__u32 tunnel_endpoint; /* network order IPv4, 0 = none */
	__u16 cluster_id;
	__u16 flags;
};

/* PLEXUS_ENDPOINTS value, keyed by the pod's IPv4 (network order). */
struct endpoint_info {
	__u32 ifindex; /* host-side veth */
	__u16 ep_id;
	__u16 flags;
	__u8 pod_mac[6];
	__u8 host_mac[6];
	__u32 sec_identity;
};

/* node_config.flags */
#define NODE_F_ENCRYPT 0x1        /* pod traffic to other nodes goes through WireGuard */
#define NODE_F_ENCRYPT_STRICT 0x2 /* ...and never leaves unencrypted (lib/encrypt.h) */

/* PLEXUS_CONFIG[0]. */
struct node_config {
	__u32 tunnel_ifindex;
	__u32 node_ipv4;    /* network order */
	__u32 routing_mode; /* ROUTING_* */
	__u32 gateway_ipv4; /* network order */
	__u32 cluster_id;
	__u32 flags; /* NODE_F_* */
	__u32 reserved[10];
};

/* PLEXUS_METRICS key. */
struct metrics_key {
	__u8 reason;
	__u8 dir;
	__u16 pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* One PLEXUS_EVENTS record. */
struct event {
	__u8 type; /* EVENT_* */
	/* observation point (trace), reason (drop), POLICY_MATCH_* (policy verdict), 0 */
	__u8 subtype;
	__u16 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport; /* host order; ICMP: type */
	__u16 dport; /* host order; ICMP: code */
	__u8 proto;
	__u8 tcp_flags;
	__u8 ct_state; /* CT_STATE_* */
	__u8 dir;      /* DIR_*, seen from the endpoint; 0 = unknown */
	__u32 ifindex;
	__u32 len;
	__u32 flow; /* skb->hash, the flow of Cilium's monitor lines */
	__u64 ktime_ns;
	__u32 orig_daddr; /* translation: the frontend's address (network order), else 0 */
	__u16 orig_dport; /* translation: the frontend's port (host order), else 0 */
	__u16 reserved;
};

/* What the programs learn from an IPv4 packet's headers. */
struct pkt_info {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 proto;
	__u8 tcp_flags;
	__u16 l4_off; /* offset of the L4 header in the frame; 0 = no L4 header (later fragment) */
};

/*
 * Service load balancing (lib/lb.h). PLEXUS_LB_SERVICES holds, per frontend, a master entry
 * (slot 0: how many active backends, the service id) and one entry per active backend
 * (slots 1..count: the backend id). PLEXUS_LB_BACKENDS maps a backend id to its address.
 */
struct lb_service_key {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u8 proto;
	__u8 pad;
	__u16 slot; /* 0 = master entry */
	__u16 pad2;
};

struct lb_service_value {
	__u32 backend_id; /* slots >= 1; 0 in the master */
	__u32 service_id; /* the frontend's id, also its reverse-NAT id */
	__u16 count;      /* master: active backends, slots 1..count */
	__u16 flags;      /* reserved */
};

/* lb_backend.flags */
#define LB_BACKEND_ACTIVE 0
#define LB_BACKEND_INACTIVE 1 /* keeps its connections, takes no new one */

/* PLEXUS_LB_BACKENDS value, keyed by backend id (host order, allocated by the agent). */
struct lb_backend {
	__u32 addr; /* network order */
	__u16 port; /* network order */
	__u8 proto;
	__u8 flags;       /* LB_BACKEND_* */
	__u32 service_id; /* the one frontend this backend id belongs to */
};

/* ct_key.dir */
#define CT_DIR_SERVICE 1 /* client -> frontend, as the client sent it */
#define CT_DIR_REPLY 2   /* backend -> client (or the hairpin address), as the backend replies */
#define CT_DIR_POLICY_OUT 3 /* endpoint -> peer, allowed on its way out of the endpoint */
#define CT_DIR_POLICY_IN 4  /* peer -> endpoint, allowed on its way into the endpoint */

/* PLEXUS_CT key: a packet's tuple as it is on the wire at lookup time. */
struct ct_key {
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 dir; /* CT_DIR_* */
	__u16 pad;
};

/* ct_entry.flags */
#define CT_F_HAIRPIN 0x01 /* the client reached itself: source translated to IPV4_LOOPBACK */

struct ct_entry {
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet that refreshed it */
	__u32 backend_id;   /* CT_DIR_SERVICE: the chosen backend */
	__u32 service_id;
	__u32 rev_nat_addr; /* CT_DIR_REPLY: source to restore (the service address) */
	__u16 rev_nat_port; /* network order */
	__u8 tcp_flags;     /* TCP flags seen in this direction */
	__u8 flags;         /* CT_F_* */
	__u32 client_addr;  /* CT_DIR_REPLY with CT_F_HAIRPIN: destination to restore */
	__u32 reserved;
};

/* Source address of a pod reaching itself through a service (Cilium's IPV4_LOOPBACK). */
#define IPV4_LOOPBACK 0xA9FE2A01u /* 169.254.42.1, host order */

/* The Rust side (src/abi.rs) relies on these sizes. */
_Static_assert(sizeof(struct ipcache_key) == 8, "ipcache_key layout");
_Static_assert(sizeof(struct ipcache_value) == 12, "ipcache_value layout");
_Static_assert(sizeof(struct endpoint_info) == 24, "endpoint_info layout");
_Static_assert(sizeof(struct node_config) == 64, "node_config layout");
_Static_assert(sizeof(struct metrics_key) == 4, "metrics_key layout");
_Static_assert(sizeof(struct metrics_value) == 16, "metrics_value layout");
_Static_assert(sizeof(struct event) == 56, "event layout");
_Static_assert(sizeof(struct lb_service_key) == 12, "lb_service_key layout");
_Static_assert(sizeof(struct lb_service_value) == 12, "lb_service_value layout");
_Static_assert(sizeof(struct lb_backend) == 12, "lb_backend layout");
_Static_assert(sizeof(struct ct_key) == 16, "ct_key layout");
_Static_assert(sizeof(struct ct_entry) == 32, "ct_entry layout");

#endif
