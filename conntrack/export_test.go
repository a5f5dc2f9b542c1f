package conntrack

// CollideKey makes the registry hold, for tracked conn c, other's hash in place of the hash
// of key (one of the keys c was tracked under): what c's index looks like when key's 63-bit
// hash and other's collide. The seed is random per registry, so a test cannot pick two keys
// that collide; it can make the index hold one. It reports whether c held key's hash.
func CollideKey(r *Registry, c *Conn, key, other string) bool {
	sh := &r.shards[c.shard]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if c.state.Load() != stateTracked {
		return false
	}
	off := int(c.off)
	n := int((sh.keys[off] >> 32) & 0x7fffffff)
	h := r.hash(key)
	for i := off + 1; i <= off+n; i++ {
		if sh.keys[i] == h {
			sh.keys[i] = r.hash(other)
			return true
		}
	}
	return false
}
