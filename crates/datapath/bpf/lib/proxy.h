/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The DNS proxy redirect.
 *
 * PLEXUS_DNS_REDIRECT names, per endpoint id, the port of the node's DNS proxy: a query (UDP or
 * TCP to port 53) that egress policy allowed is handed to the proxy's socket on 127.0.0.1 with
 * bpf_sk_assign, unchanged, and marked MARK_TO_PROXY, which the node routes locally (a rule
 * `fwmark MARK_TO_PROXY/MARK_TO_PROXY_MASK lookup PROXY_TABLE` and `local 0.0.0.0/0 dev lo` in
 * that table, installed by the agent). The proxy's sockets are transparent: they receive the
 * query with its original destination and answer from it, so the pod sees its server answer.
 *
 * When no proxy socket is there (the agent is restarting), the query goes to its server as if
 * there were no redirect: lookups keep working, the server's L4 policy still applies.
 */
#ifndef PLEXUS_PROXY_H
#define PLEXUS_PROXY_H

#include "common.h"

/* Outside MARK_MAGIC_MASK: to_container clears the mark anyway. */
#define MARK_TO_PROXY 0x200u
#define MARK_TO_PROXY_MASK 0xf00u
#define DNS_PORT 53

struct dns_redirect {
	__u16 port; /* the proxy's, host order */
	__u16 pad;
};

_Static_assert(sizeof(struct dns_redirect) == 4, "dns_redirect layout");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct dns_redirect);
	__uint(max_entries, 65535);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_DNS_REDIRECT SEC(".maps");

/*
 * The proxy's socket for the packet: for TCP the connection's own socket when the proxy
 * accepted it already, else the listener; for UDP the proxy's socket. A reference to release.
 */
static __always_inline struct bpf_sock *proxy_socket(struct __sk_buff *skb,
						     const struct pkt_info *pi, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	if (pi->proto == IPPROTO_TCP) {
		t.ipv4.saddr = pi->saddr;
		t.ipv4.daddr = pi->daddr;
		t.ipv4.sport = bpf_htons(pi->sport);
		t.ipv4.dport = bpf_htons(pi->dport);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			if (sk->state != BPF_TCP_LISTEN)
				return sk;
			bpf_sk_release(sk);
		}
	}
	t.ipv4.saddr = 0;
	t.ipv4.sport = 0;
	t.ipv4.daddr = bpf_htonl(0x7f000001); /* 127.0.0.1 */
	t.ipv4.dport = bpf_htons(port);
	if (pi->proto == IPPROTO_TCP)
		return bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	return bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* Hands a DNS query of endpoint `ep_id` to the proxy; 1 when it did (pass the packet up). */
static __always_inline int dns_redirect(struct __sk_buff *skb, __u16 ep_id,
					const struct pkt_info *pi)
{
	struct dns_redirect *r;
	struct bpf_sock *sk;
	__u32 key = ep_id;
	long err;

	if (pi->dport != DNS_PORT || (pi->proto != IPPROTO_UDP && pi->proto != IPPROTO_TCP))
		return 0;
	r = bpf_map_lookup_elem(&PLEXUS_DNS_REDIRECT, &key);
	if (!r)
		return 0;
	sk = proxy_socket(skb, pi, r->port);
	if (!sk)
		return 0;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return 0;
	skb->mark = MARK_TO_PROXY;
	return 1;
}

#endif
