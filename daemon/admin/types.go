package admin

import (
	"time"

	"github.com/guardian-mtls/guardian/revoke"
)

// RevokeRequest is the body of POST /v1/revocations.
type RevokeRequest struct {
	Key    string `json:"key"`
	Reason string `json:"reason,omitempty"`
}

// RevokeResponse answers POST /v1/revocations.
type RevokeResponse struct {
	Entry   revoke.Entry `json:"entry"`
	Version uint64       `json:"version"`
	// Matched counts this node's live conns the key hit; each is being closed.
	Matched int `json:"matched_conns"`
}

// CRL is one CRL in force: /v1/crls.
type CRL struct {
	ID         string    `json:"id"`
	Issuer     string    `json:"issuer"`
	IssuerKey  string    `json:"issuer_key"` // SHA-256 of the verifying CA key: two CAs may share a DN
	Subject    string    `json:"subject"`
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	Entries    int       `json:"entries"`
	Origin     string    `json:"origin"`
	AppliedAt  time.Time `json:"applied_at"`
	Stale      bool      `json:"stale"`
}

// Conn is one live conn of the node: /v1/conns.
type Conn struct {
	ID       uint64    `json:"id"`
	Remote   string    `json:"remote"`
	Audience string    `json:"audience"`
	Subject  string    `json:"subject,omitempty"`
	URIs     []string  `json:"uris,omitempty"`
	Since    time.Time `json:"since"`
	Keys     []string  `json:"keys,omitempty"`
	// AllowedBy is the audience's allow pattern that admitted the conn, if it has a policy.
	AllowedBy string `json:"allowed_by,omitempty"`
}

// ReseedRequest is the body of POST /v1/reseed.
type ReseedRequest struct {
	Apply bool `json:"apply"`
}

// ReseedResponse answers POST /v1/reseed: this node's entries that Redis lacks.
type ReseedResponse struct {
	Missing []revoke.Entry `json:"missing"`
	Written int            `json:"written"`
	Version uint64         `json:"version,omitempty"`
}
