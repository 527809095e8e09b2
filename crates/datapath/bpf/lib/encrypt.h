/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Strict-mode encryption (Cilium's encryption strict mode, for WireGuard): with
 * NODE_F_ENCRYPT_STRICT set, a pod's packet to a pod behind another node passes only when that
 * node has a WireGuard peer on this node's device (PLEXUS_WG_PEERS). Otherwise it is dropped
 * with DROP_UNENCRYPTED: until the peer's key is known, its traffic would leave in the clear.
 * Same-node traffic is never encrypted and never checked.
 */
#ifndef PLEXUS_ENCRYPT_H
#define PLEXUS_ENCRYPT_H

#include "common.h"
#include "maps.h"

/* Whether a pod's packet towards `node` (network order, 0 = not behind a node) must be dropped. */
static __always_inline int encrypt_strict_drop(const struct node_config *cfg, __u32 node)
{
	if (!(cfg->flags & NODE_F_ENCRYPT) || !(cfg->flags & NODE_F_ENCRYPT_STRICT))
		return 0;
	if (!node || node == cfg->node_ipv4)
		return 0;
	return bpf_map_lookup_elem(&PLEXUS_WG_PEERS, &node) == 0;
}

#endif
