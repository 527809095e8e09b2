/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Policy enforcement points. Per-endpoint policy maps come later; until then every packet is
 * allowed, but the programs already ask here so that enforcement slots in without restructuring.
 */
#ifndef PLEXUS_POLICY_H
#define PLEXUS_POLICY_H

#include "common.h"

#define POLICY_ALLOW 0
#define POLICY_DENY 1

static __always_inline int policy_egress(const struct endpoint_info *src, __u32 dst_identity,
					 const struct pkt_info *pi)
{
	(void)src;
	(void)dst_identity;
	(void)pi;
	return POLICY_ALLOW;
}

static __always_inline int policy_ingress(const struct endpoint_info *dst, __u32 src_identity,
					  const struct pkt_info *pi)
{
	(void)dst;
	(void)src_identity;
	(void)pi;
	return POLICY_ALLOW;
}

#endif
