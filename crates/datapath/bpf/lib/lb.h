/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service load balancing (ClusterIP), at the pod's side like Cilium's socket-less path:
 *
 * - lb4_local (from_container): a packet to a frontend (address, port, protocol) keeps the
 *   backend its connection has in PLEXUS_CT, or picks a random active slot; the destination is
 *   translated to the backend (DNAT). A pod that reaches itself also gets its source translated
 *   to IPV4_LOOPBACK (hairpin), since its kernel drops packets from its own address.
 * - lb4_rev_nat (to_container, and from_container for hairpin replies): a reply of a backend
 *   gets the service address and port back as its source (and, hairpin, the pod's address as
 *   destination). One PLEXUS_CT lookup for any other packet.
 *
 * Checksums are updated incrementally: the IPv4 header's, and the L4 one including its
 * pseudo-header; a UDP checksum of 0 (none) stays 0.
 *
 * Each new connection lb4_local translates (when it writes the connection's entries: the first
 * packet, or a TCP SYN that reopens a tuple) is reported once with a translation event; the
 * packets after it are not.
 */
#ifndef PLEXUS_LB_H
#define PLEXUS_LB_H

#include "conntrack.h"
#include "trace.h"

#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SADDR_OFF (ETH_HLEN + 12)
#define IP_DADDR_OFF (ETH_HLEN + 16)

static __always_inline __u32 l4_csum_off(const struct pkt_info *pi)
{
	return pi->l4_off + (pi->proto == IPPROTO_TCP ? 16 : 6);
}

static __always_inline __u64 l4_csum_flags(const struct pkt_info *pi)
{
	return pi->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites the address at `off` (source or destination) from `from` to `to` (network order). */
static __always_inline int nat_addr(struct __sk_buff *skb, const struct pkt_info *pi, __u32 off,
				    __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(pi), from, to,
				BPF_F_PSEUDO_HDR | l4_csum_flags(pi) | sizeof(to)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* Rewrites the port `port_off` bytes into the L4 header (0 source, 2 destination). */
static __always_inline int nat_port(struct __sk_buff *skb, const struct pkt_info *pi,
				    __u32 port_off, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(pi), from, to, l4_csum_flags(pi) | sizeof(to)) <
	    0)
		return -1;
	return bpf_skb_store_bytes(skb, pi->l4_off + port_off, &to, sizeof(to), 0);
}

static __always_inline int lb_applies(const struct pkt_info *pi)
{
	return pi->l4_off && (pi->proto == IPPROTO_TCP || pi->proto == IPPROTO_UDP);
}

/* The identity of a backend, as from_container will resolve it for the translated packet. */
static __always_inline __u32 lb_backend_identity(__be32 addr)
{
	struct endpoint_info *ep = lookup_endpoint(addr);
	struct ipcache_value *info;

	if (ep)
		return ep->sec_identity;
	info = lookup_ipcache(addr);
	return info ? info->sec_identity : IDENTITY_WORLD;
}

/*
 * Load balancing of a packet leaving the pod `src`. Returns 0 (pi describes the packet as it is
 * now: translated, or untouched when it is not for a frontend) or a DROP_* reason.
 */
static __always_inline int lb4_local(struct __sk_buff *skb, struct pkt_info *pi,
				     const struct endpoint_info *src)
{
	struct lb_service_key skey = {};
	struct lb_service_value *svc, *slot;
	struct lb_backend *be = 0;
	struct ct_key fkey, rkey;
	struct ct_entry *fwd = 0;
	struct ct_entry entry = {};
	__u32 backend_id = 0, service_id;
	__be32 be_addr, new_saddr, client = pi->saddr, vip = pi->daddr;
	__be16 be_port, vport = bpf_htons(pi->dport);
	int syn = tcp_is_syn(pi), created = 0;
	__u64 now;

	if (!lb_applies(pi))
		return 0;
	skey.addr = pi->daddr;
	skey.port = vport;
	skey.proto = pi->proto;
	svc = bpf_map_lookup_elem(&PLEXUS_LB_SERVICES, &skey);
	if (!svc)
		return 0;
	service_id = svc->service_id;

	now = bpf_ktime_get_ns();
	ct_key_of(&fkey, pi, CT_DIR_SERVICE);
	fwd = ct_lookup(&fkey, now);
	if (fwd) {
		backend_id = fwd->backend_id;
		be = bpf_map_lookup_elem(&PLEXUS_LB_BACKENDS, &backend_id);
		/* Gone, reused by another frontend, or a new connection to an inactive backend. */
		if (be && (be->service_id != service_id ||
			   (syn && be->flags == LB_BACKEND_INACTIVE)))
			be = 0;
		if (be && !syn)
			ct_refresh(fwd, pi->tcp_flags, now);
	}
	if (!be) {
		__u16 count = svc->count;

		if (!count)
			return DROP_NO_SERVICE_BACKEND;
		skey.slot = (bpf_get_prandom_u32() % count) + 1;
		slot = bpf_map_lookup_elem(&PLEXUS_LB_SERVICES, &skey);
		if (!slot)
			return DROP_NO_SERVICE_BACKEND;
		backend_id = slot->backend_id;
		be = bpf_map_lookup_elem(&PLEXUS_LB_BACKENDS, &backend_id);
		if (!be)
			return DROP_NO_SERVICE_BACKEND;
		fwd = 0;
	}
	be_addr = be->addr;
	be_port = be->port;
	new_saddr = be_addr == client ? bpf_htonl(IPV4_LOOPBACK) : client;

	if (!fwd || syn) {
		/* A new connection (a SYN reopens a tuple): both directions start afresh. */
		entry.last_seen_ns = now;
		entry.backend_id = backend_id;
		entry.service_id = service_id;
		entry.tcp_flags = pi->tcp_flags;
		entry.flags = new_saddr != client ? CT_F_HAIRPIN : 0;
		bpf_map_update_elem(&PLEXUS_CT, &fkey, &entry, BPF_ANY);

		rkey.saddr = be_addr;
		rkey.daddr = new_saddr;
		rkey.sport = be_port;
		rkey.dport = bpf_htons(pi->sport);
		rkey.proto = pi->proto;
		rkey.dir = CT_DIR_REPLY;
		rkey.pad = 0;
		entry.tcp_flags = 0;
		entry.rev_nat_addr = vip;
		entry.rev_nat_port = vport;
		entry.client_addr = client;
		bpf_map_update_elem(&PLEXUS_CT, &rkey, &entry, BPF_ANY);
		created = 1;
	}

	if (nat_addr(skb, pi, IP_DADDR_OFF, vip, be_addr) < 0 ||
	    nat_port(skb, pi, 2, vport, be_port) < 0 ||
	    nat_addr(skb, pi, IP_SADDR_OFF, client, new_saddr) < 0)
		return DROP_INVALID_PACKET;
	pi->daddr = be_addr;
	pi->dport = bpf_ntohs(be_port);
	pi->saddr = new_saddr;
	if (created)
		send_translation(skb, src->ep_id, src->sec_identity & IDENTITY_MASK,
				 lb_backend_identity(be_addr), pi, client, vip, bpf_ntohs(vport));
	return 0;
}

/*
 * Reverse translation of a backend's reply, if `pi` is one. Returns 0 (pi updated when
 * translated) or a DROP_* reason.
 */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct pkt_info *pi)
{
	struct ct_key key;
	struct ct_entry *e;
	__be32 saddr, daddr;
	__be16 sport;
	__u64 now;

	if (!lb_applies(pi))
		return 0;
	ct_key_of(&key, pi, CT_DIR_REPLY);
	e = bpf_map_lookup_elem(&PLEXUS_CT, &key);
	if (!e)
		return 0;
	/* The clock is read only for the packets that hit. */
	now = bpf_ktime_get_ns();
	if (!ct_is_live(e, key.proto, now))
		return 0;
	ct_refresh(e, pi->tcp_flags, now);
	saddr = e->rev_nat_addr;
	sport = e->rev_nat_port;
	daddr = (e->flags & CT_F_HAIRPIN) ? e->client_addr : pi->daddr;

	if (nat_addr(skb, pi, IP_SADDR_OFF, pi->saddr, saddr) < 0 ||
	    nat_port(skb, pi, 0, bpf_htons(pi->sport), sport) < 0 ||
	    nat_addr(skb, pi, IP_DADDR_OFF, pi->daddr, daddr) < 0)
		return DROP_INVALID_PACKET;
	pi->saddr = saddr;
	pi->sport = bpf_ntohs(sport);
	pi->daddr = daddr;
	return 0;
}

#endif
