/* SPDX-License-Identifier: Apache-2.0 */
/* Per-CPU packet and byte counters keyed by (reason, direction). */
#ifndef PLEXUS_METRICS_H
#define PLEXUS_METRICS_H

#include "maps.h"

static __always_inline void count(__u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *val;

	val = bpf_map_lookup_elem(&PLEXUS_METRICS, &key);
	if (val) {
		val->packets += 1;
		val->bytes += bytes;
		return;
	}
	struct metrics_value init = { .packets = 1, .bytes = bytes };
	bpf_map_update_elem(&PLEXUS_METRICS, &key, &init, BPF_NOEXIST);
}

#endif
