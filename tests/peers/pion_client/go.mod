module pion_client

go 1.21

require github.com/pion/dtls/v3 v3.0.7

require (
	github.com/pion/logging v0.2.4 // indirect
	github.com/pion/transport/v3 v3.0.7 // indirect
	golang.org/x/crypto v0.32.0 // indirect
)
