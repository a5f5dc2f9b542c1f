// Command guardian terminates mTLS and closes live connections the moment their client
// certificate is revoked.
//
//	guardian demo [--dir DIR] [--listen ADDR] [--admin ADDR]   the embedded default, no Redis
//	guardian pki init DIR                                       a throw-away dev PKI
//	guardian revoke   --admin URL --admin-cert F --admin-key F --admin-ca F SELECTOR [--reason R]
//	guardian unrevoke --admin URL ... SELECTOR
//	guardian list     --admin URL ...                           revocations in force
//	guardian conns    --admin URL ...                           a node's live conns
//	guardian version
//
// A SELECTOR is one of --cert FILE [--by KIND], --serial HEX --issuer-cert FILE,
// --fingerprint HEX, --spki HEX, --uri URI, --dns NAME, --email ADDR, --subject DN, --key KEY.
package main
