package revoke

import (
	"math/bits"
	"sync/atomic"
)

// filter is a split-block Bloom filter (the layout Parquet uses): each key sets one bit in
// each of the eight 32-bit words of one 32-byte block. A lookup that misses — almost every
// lookup a handshake makes — touches one block and never the maps, whose memory at a
// million entries is far outside the CPU caches. Bits are atomics so lookups take no lock.
// Removal leaves bits set (a false positive only costs a map lookup); the Set rebuilds the
// filter when removals or growth make it too loose.
type filter struct {
	blocks []filterBlock
	mask   uint64
	cap    int // entries it was sized for
}

type filterBlock [8]atomic.Uint32

var salts = [8]uint32{0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31}

// bitsPerEntry of 16 gives about 0.1% false positives.
const bitsPerEntry = 16

func newFilter(entries int) *filter {
	if entries < 1024 {
		entries = 1024
	}
	n := uint64(1) << bits.Len64(uint64(entries*bitsPerEntry/256))
	return &filter{blocks: make([]filterBlock, n), mask: n - 1, cap: entries}
}

func (f *filter) add(h uint64) {
	b := &f.blocks[(h>>32)&f.mask]
	lo := uint32(h)
	for i := range b {
		bit := uint32(1) << ((lo * salts[i]) >> 27)
		if b[i].Load()&bit == 0 {
			b[i].Or(bit)
		}
	}
}

func (f *filter) mayHave(h uint64) bool {
	b := &f.blocks[(h>>32)&f.mask]
	lo := uint32(h)
	for i := range b {
		if b[i].Load()&(uint32(1)<<((lo*salts[i])>>27)) == 0 {
			return false
		}
	}
	return true
}
