/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ARP responder: a pod's only neighbour is its gateway address, answered with the MAC of the
 * pod's host-side veth so that every packet leaving the pod reaches from_container.
 */
#ifndef PLEXUS_ARP_H
#define PLEXUS_ARP_H

#include "maps.h"
#include "trace.h"

/* From linux/if_arp.h, which drags in libc headers. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

static __always_inline int handle_arp(struct __sk_buff *skb, const struct node_config *cfg)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct arp_eth_ipv4 *arp;
	struct endpoint_info *ep;
	__be32 sip, tip;

	ensure_linear(skb, ETH_HLEN + sizeof(*arp));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	arp = data + ETH_HLEN;
	if ((void *)(arp + 1) > data_end)
		return send_drop(skb, DROP_INVALID_PACKET, DIR_EGRESS, 0, 0, 0, 0);
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4 || arp->op != bpf_htons(ARPOP_REQUEST))
		return send_drop(skb, DROP_UNSUPPORTED_ARP, DIR_EGRESS, 0, 0, 0, 0);

	sip = arp->sip;
	tip = arp->tip;
	if (tip != cfg->gateway_ipv4)
		return send_drop(skb, DROP_UNSUPPORTED_ARP, DIR_EGRESS, 0, 0, 0, 0);
	ep = lookup_endpoint(sip);
	if (!ep)
		return send_drop(skb, DROP_UNKNOWN_SOURCE, DIR_EGRESS, 0, 0, 0, 0);

	/* Reply in place: to the requester, from the host veth, "gateway is at host_mac". */
	__builtin_memcpy(eth->h_dest, arp->sha, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	arp->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	arp->tip = sip;
	__builtin_memcpy(arp->sha, ep->host_mac, ETH_ALEN);
	arp->sip = tip;

	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}

#endif
