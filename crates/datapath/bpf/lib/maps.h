/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The datapath's maps. All are pinned by name, so an agent that loads the object again with the
 * same pin directory reuses them and the state they hold.
 */
#ifndef PLEXUS_MAPS_H
#define PLEXUS_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_IPCACHE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65535);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_ENDPOINTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_METRICS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_EVENTS SEC(".maps");

/* Events lost because PLEXUS_EVENTS was full (bpf_ringbuf_output failed), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_EVENTS_LOST SEC(".maps");

/* Frontends: master entries (slot 0) and backend slots. 30,000 services fit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_service_key);
	__type(value, struct lb_service_value);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_LB_SERVICES SEC(".maps");

/* Backends by id; one id per (frontend, backend address). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_LB_BACKENDS SEC(".maps");

/* Connection tracking; least recently used entries go first when it is full. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_CT SEC(".maps");

/*
 * Nodes (underlay IPv4, network order) that have a WireGuard peer configured on this node's
 * device: the agent adds one after the device accepted the peer and removes it before the
 * peer goes. The value is reserved (0).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PLEXUS_WG_PEERS SEC(".maps");

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&PLEXUS_CONFIG, &zero);
}

static __always_inline struct endpoint_info *lookup_endpoint(__u32 ipv4)
{
	return bpf_map_lookup_elem(&PLEXUS_ENDPOINTS, &ipv4);
}

static __always_inline struct ipcache_value *lookup_ipcache(__u32 ipv4)
{
	struct ipcache_key key = { .prefixlen = 32, .ipv4 = ipv4 };

	return bpf_map_lookup_elem(&PLEXUS_IPCACHE, &key);
}

#endif
