/* SPDX-License-Identifier: Apache-2.0 */
/* Header parsing: Ethernet and IPv4 with its TCP, UDP or ICMP header. */
#ifndef PLEXUS_PARSE_H
#define PLEXUS_PARSE_H

#include "common.h"

/* The first bytes of an ICMP header (linux/icmp.h drags in libc headers). */
struct icmp_head {
	__u8 type;
	__u8 code;
	__u16 checksum;
};

/* Make the first `len` bytes directly readable, pulling them into the linear part if needed. */
static __always_inline int ensure_linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len)
		len = skb->len;
	return bpf_skb_pull_data(skb, len);
}

/*
 * Fills `pi` from the IPv4 packet behind the Ethernet header. Returns 0, or -1 when the packet
 * is too short or malformed. Ports are left at 0 for fragments after the first.
 */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt_info *pi)
{
	void *data, *data_end;
	struct iphdr *ip;
	__u32 l4_off;

	ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcphdr));
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;

	pi->saddr = ip->saddr;
	pi->daddr = ip->daddr;
	pi->proto = ip->protocol;
	pi->sport = 0;
	pi->dport = 0;
	pi->tcp_flags = 0;
	pi->l4_off = 0;

	if (ip->frag_off & bpf_htons(0x1FFF))
		return 0;

	l4_off = ETH_HLEN + ((__u32)ip->ihl & 0xF) * 4;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = data + l4_off;

		if ((void *)(tcp + 1) > data_end)
			return 0;
		pi->sport = bpf_ntohs(tcp->source);
		pi->dport = bpf_ntohs(tcp->dest);
		/* The flags byte after doff/res1: FIN, SYN, RST, PSH, ACK, URG, ECE, CWR. */
		pi->tcp_flags = ((__u8 *)tcp)[13];
		pi->l4_off = l4_off;
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = data + l4_off;

		if ((void *)(udp + 1) > data_end)
			return 0;
		pi->sport = bpf_ntohs(udp->source);
		pi->dport = bpf_ntohs(udp->dest);
		pi->l4_off = l4_off;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_head *icmp = data + l4_off;

		if ((void *)(icmp + 1) > data_end)
			return 0;
		pi->sport = icmp->type;
		pi->dport = icmp->code;
		break;
	}
	}
	return 0;
}

/* Ethernet protocol of the frame (network order), or 0 when it is too short. */
static __always_inline __u16 eth_proto(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;

	ensure_linear(skb, ETH_HLEN);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto;
}

/* Rewrites the Ethernet addresses for delivery to `ep`: to its pod, from its host veth. */
static __always_inline int rewrite_macs_to_endpoint(struct __sk_buff *skb,
						    const struct endpoint_info *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	return 0;
}

#endif
