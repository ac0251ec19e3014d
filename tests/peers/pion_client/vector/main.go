// Command vector writes an independent test vector for DTLS 1.2 Connection IDs (RFC 9146):
// a pion/dtls server and a pion/dtls client run in this one process over two UDP sockets on
// loopback, both asking for a non-empty CID, on TLS_PSK_WITH_AES_128_GCM_SHA256.  Every
// datagram between them is captured (at the client's socket, in the order the client sent or
// received it), the master secret comes from the client's KeyLogWriter, and the application
// plaintexts each side sent are recorded, so anyone can check every record from scratch.
//
//	go run ./vector -out ../../vectors/pion_cid_aes128gcm.json
//
// The format is described in tests/vectors/README.md.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
)

const (
	identity = "vector-client"
	// Bytes of zero padding the client puts in its (CID-wrapped) Finished record, so the
	// vector shows DTLSInnerPlaintext padding; pion pads handshake records only.
	clientPadding = 3
)

// datagram is one captured UDP payload.
type datagram struct {
	Direction string `json:"direction"` // "client_to_server" or "server_to_client"
	Hex       string `json:"hex"`
}

// capture wraps the client's socket and records every datagram it writes or reads.
type capture struct {
	net.PacketConn
	mu        sync.Mutex
	datagrams []datagram
}

func (c *capture) add(direction string, payload []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.datagrams = append(c.datagrams, datagram{direction, hex.EncodeToString(payload)})
}

func (c *capture) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.add("server_to_client", b[:n])
	}
	return n, addr, err
}

func (c *capture) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.add("client_to_server", b)
	return c.PacketConn.WriteTo(b, addr)
}

// fixedCID returns a generator that always gives the same random CID of n bytes (pion asks
// the generator again on a second ClientHello; the vector wants one CID per side).
func fixedCID(n int) ([]byte, func() []byte) {
	cid := make([]byte, n)
	if _, err := rand.Read(cid); err != nil {
		log.Fatal(err)
	}
	return cid, func() []byte { return append([]byte(nil), cid...) }
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() {
	out := flag.String("out", "pion_cid_aes128gcm.json", "where to write the vector")
	flag.Parse()

	psk := make([]byte, 16)
	must(pskRead(psk))
	clientCID, clientGen := fixedCID(5) // the client receives records carrying this CID
	serverCID, serverGen := fixedCID(6) // the server receives records carrying this CID
	suites := []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}
	pskCallback := func([]byte) ([]byte, error) { return psk, nil }
	var keyLog bytes.Buffer

	serverSocket, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(err)
	clientSocket, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	must(err)
	captured := &capture{PacketConn: clientSocket}

	server, err := dtls.Server(serverSocket, clientSocket.LocalAddr(), &dtls.Config{
		PSK: pskCallback, PSKIdentityHint: []byte("vector-server"), CipherSuites: suites,
		ConnectionIDGenerator: serverGen,
	})
	must(err)
	client, err := dtls.Client(captured, serverSocket.LocalAddr(), &dtls.Config{
		PSK: pskCallback, PSKIdentityHint: []byte(identity), CipherSuites: suites,
		ConnectionIDGenerator:  clientGen,
		PaddingLengthGenerator: func(uint) uint { return clientPadding },
		KeyLogWriter:           &keyLog,
	})
	must(err)

	toServer := []string{"hello from the pion client", "second message, CID in the record header"}
	toClient := []string{"ACK from the pion server"}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 2048)
		for range toServer {
			if _, err := server.Read(buf); err != nil {
				done <- err
				return
			}
		}
		_, err := server.Write([]byte(toClient[0]))
		done <- err
	}()
	for _, text := range toServer {
		_, err := client.Write([]byte(text))
		must(err)
		// One record per datagram, in order: give the server a moment before the next.
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 2048)
	n, err := client.Read(buf)
	must(err)
	if string(buf[:n]) != toClient[0] {
		log.Fatalf("client read %q", buf[:n])
	}
	must(<-done)
	must(client.Close()) // close_notify, a CID-wrapped alert record
	time.Sleep(50 * time.Millisecond)
	_ = server.Close()

	fields := strings.Fields(keyLog.String())
	if len(fields) != 3 || fields[0] != "CLIENT_RANDOM" {
		log.Fatalf("unexpected key log %q", keyLog.String())
	}
	captured.mu.Lock()
	defer captured.mu.Unlock()
	vector := map[string]any{
		"description": "DTLS 1.2 with RFC 9146 Connection IDs both ways, captured between a " +
			"pion/dtls v3.0.7 client and server (tests/peers/pion_client/vector); see " +
			"tests/vectors/README.md",
		"cipher_suite":            "TLS_PSK_WITH_AES_128_GCM_SHA256",
		"cipher_suite_id":         int(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
		"psk_identity":            identity,
		"psk":                     hex.EncodeToString(psk),
		"client_random":           fields[1],
		"server_random":           serverRandom(captured.datagrams),
		"master_secret":           fields[2],
		"client_cid":              hex.EncodeToString(clientCID),
		"server_cid":              hex.EncodeToString(serverCID),
		"client_finished_padding": clientPadding,
		"datagrams":               captured.datagrams,
		"application_data": map[string][]string{
			"client_to_server": toServer, "server_to_client": toClient,
		},
	}
	text, err := json.MarshalIndent(vector, "", "  ")
	must(err)
	must(os.WriteFile(*out, append(text, '\n'), 0o644))
	fmt.Println("wrote", *out, len(captured.datagrams), "datagrams")
}

func pskRead(b []byte) error {
	_, err := rand.Read(b)
	return err
}

// serverRandom finds the ServerHello among the captured datagrams and returns its random:
// record header (13 bytes), handshake header (12 bytes), server_version (2), random (32).
func serverRandom(datagrams []datagram) string {
	for _, d := range datagrams {
		raw, _ := hex.DecodeString(d.Hex)
		for len(raw) >= 13 {
			length := int(raw[11])<<8 | int(raw[12])
			if len(raw) < 13+length {
				break
			}
			body := raw[13 : 13+length]
			if raw[0] == 22 && d.Direction == "server_to_client" && len(body) >= 46 && body[0] == 2 {
				return hex.EncodeToString(body[14:46])
			}
			raw = raw[13+length:]
		}
	}
	log.Fatal("no ServerHello captured")
	return ""
}
