/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Plexus datapath programs (IPv4).
 *
 * from_container  tc ingress of a pod's host-side veth: packets leaving the pod.
 * to_container    tc egress of a pod's host-side veth: packets entering the pod.
 * from_overlay    tc ingress of the VXLAN device (collect-metadata mode): decapsulated packets.
 *
 * The source identity travels between programs in skb->mark (MARK_MAGIC_IDENTITY | identity)
 * and between nodes in the VXLAN VNI. Each step is a static function so that egress policy
 * slots in between the existing ones. Service load balancing (lib/lb.h) translates a packet to
 * a frontend into one to its backend first thing in from_container, so every later step sees
 * the backend; replies get the service back in to_container. With WireGuard in strict mode
 * (lib/encrypt.h), from_container drops what would reach another node unencrypted. An
 * allowed DNS query of an endpoint with DNS rules goes to the node's DNS proxy (lib/proxy.h).
 *
 * Events (lib/trace.h): a trace per forwarded packet (TCP only with SYN, FIN or RST) carrying
 * the connection state the policy's conntrack lookup found, a drop per dropped packet, and once
 * per new connection a translation (lib/lb.h) and, where a policy is enforced, a policy verdict
 * for each direction that allowed it (lib/policy.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/trace.h"
#include "lib/parse.h"
#include "lib/arp.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/encrypt.h"
#include "lib/proxy.h"

char LICENSE[] SEC("license") = "Apache-2.0";

/*
 * Hands a packet to a local endpoint: its MACs, the source identity in the mark (with `magic`:
 * MARK_MAGIC_IDENTITY, or MARK_MAGIC_REPLY when no ingress policy applies), its veth.
 */
static __always_inline int deliver_local_mark(struct __sk_buff *skb,
					      const struct endpoint_info *ep, __u32 src_identity,
					      __u8 dir, __u32 magic)
{
	__u32 ifindex = ep->ifindex;

	if (rewrite_macs_to_endpoint(skb, ep) < 0)
		return send_drop(skb, DROP_INVALID_PACKET, dir, ep->ep_id, src_identity,
				 ep->sec_identity, 0);
	skb->mark = magic | (src_identity & IDENTITY_MASK);
	count(REASON_FORWARDED, dir, skb->len);
	/* Egress of the host veth, so that to_container runs on the way in. */
	return bpf_redirect(ifindex, 0);
}

static __always_inline int deliver_local(struct __sk_buff *skb, const struct endpoint_info *ep,
					 __u32 src_identity, __u8 dir)
{
	return deliver_local_mark(skb, ep, src_identity, dir, MARK_MAGIC_IDENTITY);
}

/* Encapsulates towards `remote` (a node) with the source identity as VNI. */
static __always_inline int encap_and_redirect(struct __sk_buff *skb, const struct node_config *cfg,
					      const struct endpoint_info *src,
					      const struct ipcache_value *remote, __u32 src_identity,
					      const struct pkt_info *pi, __u8 ct_state)
{
	struct bpf_tunnel_key key = {};

	/* The helper wants the remote address in host byte order. */
	key.remote_ipv4 = bpf_ntohl(remote->tunnel_endpoint);
	key.tunnel_id = src_identity & IDENTITY_MASK;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return send_drop(skb, DROP_TUNNEL_KEY_FAILED, DIR_EGRESS, src->ep_id, src_identity,
				 remote->sec_identity, pi);
	send_trace(skb, OBS_FROM_ENDPOINT, ct_state, src->ep_id, src_identity, remote->sec_identity,
		   pi);
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

static __always_inline int ipv4_from_container(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct pkt_info pi = {};
	struct endpoint_info *src, *dst;
	struct ipcache_value *remote;
	__u32 src_identity, dst_identity;
	__u8 ct_state;
	int ret;

	if (parse_ipv4(skb, &pi) < 0)
		return send_drop(skb, DROP_INVALID_PACKET, DIR_EGRESS, 0, 0, 0, 0);

	src = lookup_endpoint(pi.saddr);
	if (!src)
		return send_drop(skb, DROP_UNKNOWN_SOURCE, DIR_EGRESS, 0, 0, 0, &pi);
	src_identity = src->sec_identity & IDENTITY_MASK;
	/* A pod may only send with its own address: the identity is derived from it. */
	if (src->ifindex != skb->ifindex)
		return send_drop(skb, DROP_SOURCE_MISMATCH, DIR_EGRESS, src->ep_id, src_identity, 0,
				 &pi);

	/*
	 * Services: to a frontend, translated to a backend. Towards IPV4_LOOPBACK only the reply of
	 * a pod to itself through a service (hairpin), translated back and delivered to it as a
	 * reply (its request passed policy on the way in).
	 */
	if (pi.daddr == bpf_htonl(IPV4_LOOPBACK)) {
		ret = lb4_rev_nat(skb, &pi);
		if (ret)
			return send_drop(skb, ret, DIR_EGRESS, src->ep_id, src_identity, 0, &pi);
		dst = pi.daddr != bpf_htonl(IPV4_LOOPBACK) ? lookup_endpoint(pi.daddr) : 0;
		if (dst) {
			send_trace(skb, OBS_FROM_ENDPOINT, CT_STATE_REPLY, src->ep_id, src_identity,
				   dst->sec_identity, &pi);
			return deliver_local_mark(skb, dst, src_identity, DIR_EGRESS,
						  MARK_MAGIC_REPLY);
		}
	} else {
		ret = lb4_local(skb, &pi, src);
		if (ret)
			return send_drop(skb, ret, DIR_EGRESS, src->ep_id, src_identity, 0, &pi);
	}

	dst = lookup_endpoint(pi.daddr);
	if (dst) {
		if (policy_egress(skb, src, dst->sec_identity, &pi, &ct_state) != POLICY_ALLOW)
			return send_drop(skb, DROP_POLICY_DENIED, DIR_EGRESS, src->ep_id,
					 src_identity, dst->sec_identity, &pi);
		send_trace(skb, OBS_FROM_ENDPOINT, ct_state, src->ep_id, src_identity,
			   dst->sec_identity, &pi);
		if (dns_redirect(skb, src->ep_id, &pi))
			return TC_ACT_OK;
		return deliver_local(skb, dst, src_identity, DIR_EGRESS);
	}

	remote = lookup_ipcache(pi.daddr);
	dst_identity = remote ? remote->sec_identity : IDENTITY_WORLD;
	if (policy_egress(skb, src, dst_identity, &pi, &ct_state) != POLICY_ALLOW)
		return send_drop(skb, DROP_POLICY_DENIED, DIR_EGRESS, src->ep_id, src_identity,
				 dst_identity, &pi);

	/* A DNS query allowed to its server goes to the node's DNS proxy, when there is one. */
	if (dns_redirect(skb, src->ep_id, &pi)) {
		send_trace(skb, OBS_FROM_ENDPOINT, ct_state, src->ep_id, src_identity,
			   dst_identity, &pi);
		return TC_ACT_OK;
	}

	/* Strict mode: nothing to another node leaves before its WireGuard peer is there. */
	if (remote && encrypt_strict_drop(cfg, remote->tunnel_endpoint))
		return send_drop(skb, DROP_UNENCRYPTED, DIR_EGRESS, src->ep_id, src_identity,
				 dst_identity, &pi);

	if (remote && remote->tunnel_endpoint && cfg->routing_mode == ROUTING_TUNNEL)
		return encap_and_redirect(skb, cfg, src, remote, src_identity, &pi, ct_state);

	/* Native routing, or no tunnel endpoint: the kernel routes (the agent installs routes). */
	send_trace(skb, OBS_FROM_ENDPOINT, ct_state, src->ep_id, src_identity, dst_identity, &pi);
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	return TC_ACT_OK;
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	struct node_config *cfg = node_config();
	__u16 proto;

	if (!cfg)
		return send_drop(skb, DROP_NO_CONFIG, DIR_EGRESS, 0, 0, 0, 0);
	proto = eth_proto(skb);
	if (proto == bpf_htons(ETH_P_IP))
		return ipv4_from_container(skb, cfg);
	if (proto == bpf_htons(ETH_P_ARP))
		return handle_arp(skb, cfg);
	if (proto == 0)
		return send_drop(skb, DROP_INVALID_PACKET, DIR_EGRESS, 0, 0, 0, 0);
	return send_drop(skb, DROP_UNSUPPORTED_L3, DIR_EGRESS, 0, 0, 0, 0);
}

/* Source identity of a packet about to enter a pod. */
static __always_inline __u32 resolve_src_identity(struct __sk_buff *skb, const struct pkt_info *pi)
{
	struct ipcache_value *info;

	__u32 magic = skb->mark & MARK_MAGIC_MASK;

	if (magic == MARK_MAGIC_IDENTITY || magic == MARK_MAGIC_REPLY)
		return skb->mark & IDENTITY_MASK;
	info = lookup_ipcache(pi->saddr);
	if (info)
		return info->sec_identity;
	return IDENTITY_WORLD;
}

SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	struct pkt_info pi = {};
	struct endpoint_info *ep;
	__u32 src_identity, dst_identity = 0;
	__u16 ep_id = 0;
	__u8 ct_state = CT_STATE_UNKNOWN;
	int ret, settled;

	/* ARP replies from from_container and anything not IPv4 pass untouched. */
	if (eth_proto(skb) != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &pi) < 0)
		return send_drop(skb, DROP_INVALID_PACKET, DIR_INGRESS, 0, 0, 0, 0);

	/*
	 * The identity is the backend's, and policy sees the packet as it travelled: both before a
	 * reply gets the service's address back.
	 */
	src_identity = resolve_src_identity(skb, &pi);
	settled = (skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_REPLY;
	if (settled)
		ct_state = CT_STATE_REPLY;
	skb->mark = 0;
	ep = lookup_endpoint(pi.daddr);
	if (ep) {
		ep_id = ep->ep_id;
		dst_identity = ep->sec_identity;
		if (!settled && policy_ingress(skb, ep, src_identity, &pi, &ct_state) != POLICY_ALLOW)
			return send_drop(skb, DROP_POLICY_DENIED, DIR_INGRESS, ep_id, src_identity,
					 dst_identity, &pi);
	}
	ret = lb4_rev_nat(skb, &pi);
	if (ret)
		return send_drop(skb, ret, DIR_INGRESS, ep_id, src_identity, dst_identity, &pi);
	send_trace(skb, OBS_TO_ENDPOINT, ct_state, ep_id, src_identity, dst_identity, &pi);
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt_info pi = {};
	struct endpoint_info *ep;
	__u32 src_identity;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return send_drop(skb, DROP_NO_TUNNEL_KEY, DIR_INGRESS, 0, 0, 0, 0);
	src_identity = key.tunnel_id & IDENTITY_MASK;

	if (eth_proto(skb) != bpf_htons(ETH_P_IP))
		return send_drop(skb, DROP_UNSUPPORTED_L3, DIR_INGRESS, 0, src_identity, 0, 0);
	if (parse_ipv4(skb, &pi) < 0)
		return send_drop(skb, DROP_INVALID_PACKET, DIR_INGRESS, 0, src_identity, 0, 0);

	ep = lookup_endpoint(pi.daddr);
	if (!ep)
		return send_drop(skb, DROP_NO_ENDPOINT, DIR_INGRESS, 0, src_identity, 0, &pi);
	/* No conntrack lookup here: to_container looks the connection up on the way in. */
	send_trace(skb, OBS_FROM_OVERLAY, CT_STATE_UNKNOWN, ep->ep_id, src_identity,
		   ep->sec_identity, &pi);
	return deliver_local(skb, ep, src_identity, DIR_INGRESS);
}
