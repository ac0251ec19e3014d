// Command pion_client is a DTLS 1.2 PSK client on pion/dtls v3 that tests drive line by line
// (the protocol the Scandium client speaks too; see tests/cid_peers.py):
//
//	pion_client --host H --port P --identity ID --key HEX [--cid none|send-only|N]
//
// --cid none offers no connection_id extension, send-only offers an empty CID (we send the
// server's CID, it sends us none), N > 0 asks the server to put an N-byte CID in its records.
//
// stdout: "connected" after each handshake, "received <text>" per datagram, "error <message>"
// before exiting 1.  stdin: "send <text>", "reconnect" (close, then a new handshake on a new
// socket; always a full handshake: without a SessionStore pion never resumes), "quit" or EOF
// (close_notify, exit 0).
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
)

const handshakeTimeout = 10 * time.Second

var stdout sync.Mutex

// say prints one protocol line and flushes it at once (os.Stdout is unbuffered).
func say(format string, args ...any) {
	stdout.Lock()
	defer stdout.Unlock()
	fmt.Printf(format+"\n", args...)
}

func fail(err error) {
	say("error %s", strings.ReplaceAll(err.Error(), "\n", " "))
	os.Exit(1)
}

// cidGenerator maps --cid to pion's Config.ConnectionIDGenerator.
func cidGenerator(mode string) (func() []byte, error) {
	switch mode {
	case "none":
		return nil, nil
	case "send-only":
		return dtls.OnlySendCIDGenerator(), nil
	}
	n, err := strconv.Atoi(mode)
	if err != nil || n < 1 || n > 255 {
		return nil, fmt.Errorf("--cid must be none, send-only or 1..255, not %q", mode)
	}
	return dtls.RandomCIDGenerator(n), nil
}

// session is one association; closing tells its reader that a read error is ours.
type session struct {
	conn    *dtls.Conn
	closing atomic.Bool
}

func (s *session) close() {
	s.closing.Store(true)
	_ = s.conn.Close() // sends close_notify
}

// connect dials from a fresh UDP socket, completes the handshake and starts printing what
// arrives.
func connect(server *net.UDPAddr, config *dtls.Config) (*session, error) {
	conn, err := dtls.Dial("udp", server, config)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	say("connected")
	s := &session{conn: conn}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if !s.closing.Load() {
					fail(fmt.Errorf("read: %w", err)) // e.g. the server's close_notify or alert
				}
				return
			}
			say("received %s", strings.ToValidUTF8(string(buf[:n]), "\uFFFD"))
		}
	}()
	return s, nil
}

func main() {
	host := flag.String("host", "127.0.0.1", "server address")
	port := flag.Int("port", 0, "server port")
	identity := flag.String("identity", "", "PSK identity")
	keyHex := flag.String("key", "", "PSK (hex)")
	cid := flag.String("cid", "none", "none, send-only or a CID length N")
	flag.Parse()

	key, err := hex.DecodeString(*keyHex)
	if err != nil {
		fail(fmt.Errorf("--key: %w", err))
	}
	generator, err := cidGenerator(*cid)
	if err != nil {
		fail(err)
	}
	server, err := net.ResolveUDPAddr("udp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fail(err)
	}
	config := &dtls.Config{
		PSK:             func([]byte) ([]byte, error) { return key, nil },
		PSKIdentityHint: []byte(*identity), // pion sends this as the client's identity
		CipherSuites: []dtls.CipherSuiteID{
			dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
			dtls.TLS_PSK_WITH_AES_128_CCM,
			dtls.TLS_PSK_WITH_AES_128_CCM_8,
		},
		ConnectionIDGenerator: generator,
	}

	current, err := connect(server, config)
	if err != nil {
		fail(err)
	}
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		command, argument, _ := strings.Cut(lines.Text(), " ")
		switch command {
		case "send":
			if _, err := current.conn.Write([]byte(argument)); err != nil {
				fail(fmt.Errorf("send: %w", err))
			}
		case "reconnect":
			current.close()
			if current, err = connect(server, config); err != nil {
				fail(err)
			}
		case "quit":
			current.close()
			return
		default:
			fail(fmt.Errorf("unknown command %q", lines.Text()))
		}
	}
	current.close() // EOF: like quit
}
