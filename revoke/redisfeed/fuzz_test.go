package redisfeed

import (
	"encoding/json"
	"errors"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/revoke"
)

// FuzzParseRecord feeds the parsers of what a node reads from Redis — a stream message's
// ID and fields, and a revocation entry, as anyone with write access to Redis (or a bug in
// another tool) could have left them — arbitrary input, foreign entries included (XADD *
// with fields of its own, IDs far in the future, versions that are not numbers). Nothing
// may panic; a message without a usable version is foreign; a version comes from the v
// field when there is one (canonical, positive) and otherwise only from an ID
// "<version>-0"; what parses must be well-formed: a canonical key that the entry names, the
// source always "redis" (a Redis record cannot pass itself off as a CRL's or OCSP's claim),
// and an entry that survives its own encoding. An empty argument is a field the message
// does not have.
func FuzzParseRecord(f *testing.F) {
	k := string(revoke.SerialKey([]byte("an issuer DN"), big.NewInt(0xa1b)))
	good, _ := json.Marshal(revoke.Entry{Key: revoke.Key(k), Reason: "keyCompromise", RevokedAt: time.Unix(1700000000, 0).UTC()})
	for _, op := range []string{OpRevoke, OpUnrevoke} {
		if _, err := parseRecord(1, map[string]any{"op": op, "key": k, "entry": string(good)}); err != nil {
			f.Fatalf("the %s seed does not parse: %v", op, err)
		}
	}
	f.Add("12-0", OpRevoke, k, string(good), "")
	f.Add("13-0", OpUnrevoke, k, "", "")
	f.Add("14-0", OpCRL, strings.Repeat("ab", 32), "", "")
	f.Add("0-0", "reseed", "", "", "")
	f.Add("18446744073709551616-0", OpRevoke, k, `{"key":"`+k+`","source":"crl:x","expires":"2020-01-01T00:00:00Z"}`, "")
	f.Add("1-1", OpRevoke, "SERIAL:AB:CD", `{"key":"SERIAL:AB:CD"}`, "")
	f.Add("7-0", OpRevoke, k, `{"key":"`+k+`","reason":"bogus"}`, "")
	// Records as the scripts write them now: the version in v, the ID "<v>-0" or an auto ID.
	f.Add("12-0", OpRevoke, k, string(good), "12")
	f.Add("1700000000000-3", OpUnrevoke, k, "", "13")
	// Foreign entries: XADD * x y, far in the future, the last possible ID, shaped like a
	// record without a version, versions that are not canonical positive integers.
	f.Add("1700000000000-0", "", "", "", "")
	f.Add("9999999999999-0", "", "", "", "")
	f.Add("18446744073709551615-18446744073709551615", "", "", "", "")
	f.Add("1700000000000-1", OpRevoke, k, string(good), "")
	f.Add("1700000000000-2", OpRevoke, k, string(good), "banana")
	f.Add("5-0", OpRevoke, k, string(good), "007")
	f.Add("5-0", OpRevoke, k, string(good), "0")
	f.Add("5-0", OpRevoke, k, string(good), "-5")
	f.Add("5-0", OpRevoke, k, string(good), "18446744073709551616")
	f.Fuzz(func(t *testing.T, id, op, key, entry, vf string) {
		if v, err := parseVersion(id); err == nil && v == 0 {
			t.Fatalf("parseVersion(%q) = 0 without an error", id)
		}
		values := map[string]any{}
		for name, val := range map[string]string{"op": op, "key": key, "entry": entry, "v": vf} {
			if val != "" {
				values[name] = val
			}
		}
		v, fromID, err := messageVersion(id, values)
		switch {
		case err != nil:
			if !errors.Is(err, errForeign) || v != 0 {
				t.Fatalf("messageVersion(%q, v=%q) = %d, %v; want 0 and a foreign entry", id, vf, v, err)
			}
		case v == 0:
			t.Fatalf("messageVersion(%q, v=%q) = 0 without an error", id, vf)
		case vf != "" && (fromID || strconv.FormatUint(v, 10) != vf):
			t.Fatalf("messageVersion(%q, v=%q) = %d (from the ID: %v); want the v field", id, vf, v, fromID)
		case vf == "" && (!fromID || strconv.FormatUint(v, 10)+"-0" != id):
			t.Fatalf("messageVersion(%q) = %d (from the ID: %v) without a v field; want the ID's", id, v, fromID)
		}
		r, err := parseRecord(1, values)
		if err != nil {
			return
		}
		switch r.op {
		case OpRevoke:
			if r.entry.Key != r.key || string(r.key) != key || r.entry.Source != "redis" {
				t.Fatalf("revoke record %q: key %q, entry %+v", key, r.key, r.entry)
			}
			if pk, err := revoke.ParseKey(key); err != nil || pk != r.key {
				t.Fatalf("revoke record's key %q is not canonical (%q, %v)", key, pk, err)
			}
			b, err := json.Marshal(r.entry)
			if err != nil {
				t.Fatalf("a parsed entry does not encode: %v", err)
			}
			again, err := ParseEntry(key, string(b))
			if err != nil {
				t.Fatalf("a parsed entry, encoded, does not parse again: %v (%s)", err, b)
			}
			if again.Key != r.entry.Key || again.Reason != r.entry.Reason || !again.RevokedAt.Equal(r.entry.RevokedAt) ||
				!again.Expires.Equal(r.entry.Expires) || again.Source != r.entry.Source {
				t.Fatalf("entry changed through its own encoding: %+v, then %+v", r.entry, again)
			}
		case OpUnrevoke:
			if pk, err := revoke.ParseKey(key); err != nil || pk != r.key || string(r.key) != key {
				t.Fatalf("unrevoke record's key %q is not canonical (%q, %v)", key, pk, err)
			}
		case OpCRL:
			if !isIssuerHash(r.issuer) || r.issuer != key {
				t.Fatalf("crl record for %q parsed as issuer %q", key, r.issuer)
			}
		default:
			t.Fatalf("record with op %q parsed", r.op)
		}
	})
}
