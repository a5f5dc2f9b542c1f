package redisfeed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/clip"
	"github.com/guardian-mtls/guardian/revoke"
)

// Ops recorded in the stream.
const (
	OpRevoke   = "revoke"
	OpUnrevoke = "unrevoke"
	// OpReseed marks a reseed: every node resyncs on reading it.
	OpReseed = "reseed"
	// OpCRL records a CRL pushed for an issuer (its key is the issuer's hash); nodes read
	// the CRL from Keys.CRL.
	OpCRL = "crl"
)

// Defaults.
const (
	DefaultPrefix = "guardian"
	DefaultMaxLen = 100_000
	// MaxEntryBytes bounds one entry's JSON; larger records are skipped as malformed.
	MaxEntryBytes = 16 << 10
)

// Keys names the Redis keys of one fleet. All share the hash tag {prefix}, so they live in
// one Cluster slot and one script can touch them all.
type Keys struct {
	Revoked, Log, Version, Epoch string
	// CRLs is a hash: issuer hash → the version of the change that pushed its CRL.
	CRLs string
	pfx  string
}

// KeysFor returns the keys for prefix.
func KeysFor(prefix string) Keys {
	p := "{" + prefix + "}:"
	return Keys{Revoked: p + "revoked", Log: p + "log", Version: p + "version", Epoch: p + "epoch", CRLs: p + "crls", pfx: p}
}

// CRL is the key holding the DER CRL pushed for the issuer whose DN hashes to issuerHash.
func (k Keys) CRL(issuerHash string) string { return k.pfx + "crl:" + issuerHash }

// appendLua defines append(log, maxlen, v, field, value, …), which every script uses to add a
// record of version v to the stream. The record carries its version in its v field, and its
// ID is "<v>-0" whenever that is above the stream's last ID, as records were before v
// existed, so nodes of the previous release read them unchanged. An entry someone else added
// above "<v>-0" (XADD * …, an ID far in the future) would make that XADD fail and so stop
// every revocation; the record then takes the next auto ID instead. A stream that can take no
// further ID, or a key that is not a stream, is replaced: nodes see the records they missed
// as a version gap, or their read fall behind the version, and resync.
const appendLua = `
local function append(log, maxlen, v, ...)
  local r = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, v .. '-0', 'v', v, ...)
  if type(r) == 'table' and r.err then
    if redis.call('TYPE', log).ok == 'stream' then
      r = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, '*', 'v', v, ...)
    end
    if type(r) == 'table' and r.err then
      redis.call('DEL', log)
      r = redis.call('XADD', log, 'MAXLEN', '~', maxlen, v .. '-0', 'v', v, ...)
    end
  end
  return r
end
`

// changeScript applies one change. It refuses an unrevoke of an absent key without
// touching anything, bumps the version and appends the record before changing the hash,
// so that a failure leaves at worst a version gap (which makes every node resync), never a
// change without its record. KEYS: revoked, version, log, epoch.
// ARGV: op, key, entry JSON, maxlen, a fresh epoch token for an empty Redis.
var changeScript = redis.NewScript(changeScriptSrc)

const changeScriptSrc = appendLua + `
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[4], epoch)
end
if ARGV[1] == 'unrevoke' and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return {tonumber(redis.call('GET', KEYS[2]) or '0'), 0, epoch}
end
local v = redis.call('INCR', KEYS[2])
append(KEYS[3], ARGV[4], v, 'op', ARGV[1], 'key', ARGV[2], 'entry', ARGV[3])
if ARGV[1] == 'revoke' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return {v, 1, epoch}
`

// Store writes revocations to Redis.
type Store struct {
	pfx    string
	rdb    redis.UniversalClient
	keys   Keys
	maxLen int64
}

// NewStore returns a Store over rdb for prefix ("" means DefaultPrefix); maxLen caps the
// stream (0 means DefaultMaxLen).
func NewStore(rdb redis.UniversalClient, prefix string, maxLen int64) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	return &Store{pfx: prefix, rdb: rdb, keys: KeysFor(prefix), maxLen: maxLen}
}

// Keys returns the store's Redis keys.
func (s *Store) Keys() Keys { return s.keys }

// Client returns the Redis client.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// Revoke writes e and returns the version of the change.
func (s *Store) Revoke(ctx context.Context, e revoke.Entry) (uint64, error) {
	if _, err := revoke.ParseKey(string(e.Key)); err != nil {
		return 0, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	v, _, err := s.change(ctx, OpRevoke, string(e.Key), string(b))
	return v, err
}

// Unrevoke removes k. changed is false if k was not revoked.
func (s *Store) Unrevoke(ctx context.Context, k revoke.Key) (version uint64, changed bool, err error) {
	if _, err := revoke.ParseKey(string(k)); err != nil {
		return 0, false, err
	}
	return s.change(ctx, OpUnrevoke, string(k), "")
}

func (s *Store) change(ctx context.Context, op, key, entry string) (uint64, bool, error) {
	res, err := changeScript.Run(ctx, s.rdb, []string{s.keys.Revoked, s.keys.Version, s.keys.Log, s.keys.Epoch},
		op, key, entry, s.maxLen, newEpoch()).Slice()
	if err != nil {
		return 0, false, fmt.Errorf("redisfeed: %s %s: %w", op, key, err)
	}
	if len(res) != 3 {
		return 0, false, fmt.Errorf("redisfeed: %s %s: unexpected reply %v", op, key, res)
	}
	v, _ := res[0].(int64)
	changed, _ := res[1].(int64)
	return uint64(v), changed == 1, nil
}

// Entries reads the hash: every revocation in Redis. Records that do not parse are
// returned in bad, by field.
func (s *Store) Entries(ctx context.Context) (entries []revoke.Entry, bad map[string]error, err error) {
	m, err := s.rdb.HGetAll(ctx, s.keys.Revoked).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("redisfeed: read %s: %w", s.keys.Revoked, err)
	}
	entries, bad = parseHash(m)
	return entries, bad, nil
}

func newEpoch() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ParseEntry parses one hash value (or stream record entry) stored under field. The entry's
// key must be canonical and equal to field.
func ParseEntry(field, value string) (revoke.Entry, error) {
	if len(value) > MaxEntryBytes {
		return revoke.Entry{}, fmt.Errorf("entry of %d bytes, more than %d", len(value), MaxEntryBytes)
	}
	var e revoke.Entry
	if err := json.Unmarshal([]byte(value), &e); err != nil {
		return revoke.Entry{}, fmt.Errorf("entry is not JSON: %w", err)
	}
	k, err := revoke.ParseKey(field)
	if err != nil {
		return revoke.Entry{}, err
	}
	if k != revoke.Key(field) || e.Key != k {
		return revoke.Entry{}, fmt.Errorf("entry key %q does not match field %q, or is not canonical", e.Key, field)
	}
	if e.Reason != "" {
		if _, err := revoke.ParseReason(string(e.Reason)); err != nil {
			return revoke.Entry{}, err
		}
	}
	e.Source = "redis"
	return e, nil
}

func parseHash(m map[string]string) ([]revoke.Entry, map[string]error) {
	var out []revoke.Entry
	var bad map[string]error
	for f, v := range m {
		e, err := ParseEntry(f, v)
		if err != nil {
			if bad == nil {
				bad = map[string]error{}
			}
			bad[f] = err
			continue
		}
		out = append(out, e)
	}
	return out, bad
}

// record is one parsed stream record.
type record struct {
	version uint64
	op      string
	key     revoke.Key
	entry   revoke.Entry
	issuer  string // OpCRL
}

var errBadID = errors.New("stream ID is not <version>-0")

// parseVersion reads the version from the ID of a record written before records carried a
// v field: "<version>-0".
func parseVersion(id string) (uint64, error) {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok || seq != "0" {
		return 0, errBadID
	}
	v, err := strconv.ParseUint(ms, 10, 64)
	// Redis writes IDs in canonical form; "01-0" is none it wrote.
	if err != nil || v == 0 || strconv.FormatUint(v, 10) != ms {
		return 0, errBadID
	}
	return v, nil
}

// errForeign marks a stream entry that is not a record guardian wrote: it names no version.
var errForeign = errors.New("not a record guardian wrote")

// messageVersion returns the version of a stream message: its v field or, for a record
// written before the field existed, its ID "<version>-0" (fromID). A message with neither is
// foreign (errForeign): it has no place in the sequence of changes.
func messageVersion(id string, values map[string]any) (v uint64, fromID bool, err error) {
	if raw, ok := values["v"]; ok {
		s, _ := raw.(string)
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v == 0 || strconv.FormatUint(v, 10) != s {
			return 0, false, fmt.Errorf("%w: version %q is not a positive integer", errForeign, clip.String(s, 32))
		}
		return v, false, nil
	}
	v, err = parseVersion(id)
	if err != nil {
		return 0, false, fmt.Errorf("%w: no version field, and the %w", errForeign, err)
	}
	return v, true, nil
}

// isOp reports whether op is one that guardian writes.
func isOp(op string) bool {
	switch op {
	case OpRevoke, OpUnrevoke, OpCRL, OpReseed:
		return true
	}
	return false
}

// parseRecord parses a stream message's fields; v is its version (messageVersion).
func parseRecord(v uint64, values map[string]any) (record, error) {
	str := func(k string) string { s, _ := values[k].(string); return s }
	r := record{version: v, op: str("op")}
	key := str("key")
	switch r.op {
	case OpRevoke:
		e, err := ParseEntry(key, str("entry"))
		if err != nil {
			return r, err
		}
		r.key, r.entry = e.Key, e
	case OpCRL:
		if !isIssuerHash(key) {
			return r, fmt.Errorf("crl record for %q, not an issuer hash", clip.String(key, 80))
		}
		r.issuer = key
	case OpUnrevoke:
		k, err := revoke.ParseKey(key)
		if err != nil {
			return r, err
		}
		if k != revoke.Key(key) {
			return r, fmt.Errorf("key %q is not canonical", key)
		}
		r.key = k
	default:
		return r, fmt.Errorf("unknown op %q", clip.String(r.op, 32))
	}
	return r, nil
}

// reseedScript writes entries that Redis lacks (never overwriting one it has), lifts the
// version past minVersion and appends a "reseed" record, which makes every node resync.
// KEYS: revoked, version, log. ARGV: minVersion, maxlen, then field, value pairs.
var reseedScript = redis.NewScript(appendLua + `
local n = 0
for i = 3, #ARGV, 2 do
  n = n + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i+1])
end
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
local target = math.max(v, tonumber(ARGV[1])) + 1
redis.call('SET', KEYS[2], target)
append(KEYS[3], ARGV[2], target, 'op', 'reseed')
return {n, target}
`)

// Reseed writes back the entries Redis lacks, after a regression, and moves the version past
// minVersion (the highest any node applied) so that every node resyncs. It returns how many
// entries were written and the new version.
func (s *Store) Reseed(ctx context.Context, entries []revoke.Entry, minVersion uint64) (written int, version uint64, err error) {
	args := []any{minVersion, s.maxLen}
	for _, e := range entries {
		if c, err := revoke.ParseKey(string(e.Key)); err != nil || c != e.Key {
			return 0, 0, fmt.Errorf("redisfeed: reseed: bad key %q", e.Key)
		}
		b, err := json.Marshal(e)
		if err != nil {
			return 0, 0, err
		}
		args = append(args, string(e.Key), string(b))
	}
	res, err := reseedScript.Run(ctx, s.rdb, []string{s.keys.Revoked, s.keys.Version, s.keys.Log}, args...).Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("redisfeed: reseed: %w", err)
	}
	n, _ := res[0].(int64)
	v, _ := res[1].(int64)
	return int(n), uint64(v), nil
}

// revokeManyScript revokes a batch in one call: it writes exactly the records and hash
// fields that one change script per entry would (one version and one stream record per
// entry, in order), but Redis parses one command and enters Lua once. ARGV: the stream
// cap, a new epoch (used only if none is set), then key and entry pairs.
var revokeManyScript = redis.NewScript(appendLua + `
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[4], epoch)
end
local n = (#ARGV - 2) / 2
local v = redis.call('INCRBY', KEYS[2], n) - n
for i = 3, #ARGV, 2 do
  v = v + 1
  append(KEYS[3], ARGV[1], v, 'op', 'revoke', 'key', ARGV[i], 'entry', ARGV[i + 1])
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {v, epoch}
`)

// RevokeMany writes entries as one script call: they land together (a script is atomic),
// and a node's feed reads them in one XREAD and applies them as one change (one eviction
// scan). It returns the version of the last change. Redis runs nothing else while the
// script runs: callers with very large lists send them in batches (the bench harness loads
// its 100,000-entry denylist 5,000 at a time).
func (s *Store) RevokeMany(ctx context.Context, entries []revoke.Entry) (uint64, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	args := make([]any, 0, 2+2*len(entries))
	args = append(args, s.maxLen, newEpoch())
	for _, e := range entries {
		if c, err := revoke.ParseKey(string(e.Key)); err != nil || c != e.Key {
			return 0, fmt.Errorf("redisfeed: revoke: bad key %q", e.Key)
		}
		b, err := json.Marshal(e)
		if err != nil {
			return 0, err
		}
		args = append(args, string(e.Key), string(b))
	}
	keys := []string{s.keys.Revoked, s.keys.Version, s.keys.Log, s.keys.Epoch}
	res, err := revokeManyScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return 0, fmt.Errorf("redisfeed: revoke %d entries: %w", len(entries), err)
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("redisfeed: revoke %d entries: unexpected reply %v", len(entries), res)
	}
	v, _ := res[0].(int64)
	return uint64(v), nil
}

// pushCRLScript stores a CRL and records its push as a change. KEYS: the CRL's key, crls,
// version, log, epoch. ARGV: issuer hash, DER, the stream cap, a new epoch.
var pushCRLScript = redis.NewScript(appendLua + `
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[5], epoch)
end
local v = redis.call('INCR', KEYS[3])
append(KEYS[4], ARGV[3], v, 'op', 'crl', 'key', ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], v)
return {v, epoch}
`)

// PushCRL stores der in the CRL slot issuerHash, a SHA-256 in hex naming the CRL's issuer
// (guardian crl push hashes its DN and key identifier, so CAs sharing a DN keep a slot
// each), and records the push, so that every node loads it. Nodes check it as they check
// any CRL; the caller should have too.
func (s *Store) PushCRL(ctx context.Context, issuerHash string, der []byte) (uint64, error) {
	if !isIssuerHash(issuerHash) {
		return 0, fmt.Errorf("redisfeed: push CRL: issuer %q is not a SHA-256 in lower-case hex", clip.String(issuerHash, 80))
	}
	keys := []string{s.keys.CRL(issuerHash), s.keys.CRLs, s.keys.Version, s.keys.Log, s.keys.Epoch}
	res, err := pushCRLScript.Run(ctx, s.rdb, keys, issuerHash, der, s.maxLen, newEpoch()).Slice()
	if err != nil {
		return 0, fmt.Errorf("redisfeed: push CRL of %s: %w", issuerHash, err)
	}
	v, _ := res[0].(int64)
	return uint64(v), nil
}

func isIssuerHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ChangeScriptSource returns the Lua source of the change script, for tests and tools that
// must write raw change sequences exactly as Store does.
func ChangeScriptSource() string { return changeScriptSrc }

var _ revoke.Store = (*Store)(nil)
