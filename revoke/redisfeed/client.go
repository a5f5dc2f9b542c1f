package redisfeed

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ClientConfig selects a topology: URL for one server (redis://, rediss:// for TLS,
// unix://; user and password in the URL or below), MasterName with Addrs for Sentinel, or
// Addrs alone for Cluster.
type ClientConfig struct {
	URL        string
	Addrs      []string
	MasterName string
	Username   string // Redis 6 ACL user
	Password   string
	DB         int
	// TLS, if set, is used for Sentinel and Cluster (a rediss:// URL sets its own).
	TLS *tls.Config
}

// NewClient returns a go-redis UniversalClient for the configured topology.
func NewClient(c ClientConfig) (redis.UniversalClient, error) {
	switch {
	case c.URL != "" && len(c.Addrs) > 0:
		return nil, errors.New("redisfeed: set URL or Addrs, not both")
	case c.URL != "":
		o, err := redis.ParseURL(c.URL)
		if err != nil {
			return nil, fmt.Errorf("redisfeed: redis URL: %w", err)
		}
		if c.Username != "" {
			o.Username = c.Username
		}
		if c.Password != "" {
			o.Password = c.Password
		}
		if c.TLS != nil && o.TLSConfig != nil { // rediss://: the caller's roots, the URL's host name
			t := c.TLS.Clone()
			if t.ServerName == "" {
				t.ServerName = o.TLSConfig.ServerName
			}
			o.TLSConfig = t
		}
		return redis.NewClient(o), nil
	case c.MasterName != "":
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.MasterName, SentinelAddrs: c.Addrs, Username: c.Username, Password: c.Password,
			DB: c.DB, TLSConfig: c.TLS,
		}), nil
	case len(c.Addrs) > 0:
		if c.DB != 0 {
			return nil, errors.New("redisfeed: Redis Cluster has only database 0")
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: c.Addrs, Username: c.Username, Password: c.Password, TLSConfig: c.TLS,
		}), nil
	}
	return nil, errors.New("redisfeed: no Redis configured: set URL, or Addrs (with MasterName for Sentinel)")
}
