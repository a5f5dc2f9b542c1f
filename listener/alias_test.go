package listener_test

import "github.com/guardian-mtls/guardian/conntrack"

type conntrackConn = conntrack.Conn
