/*
 * A DTLS 1.2 PSK test client on Eclipse Californium Scandium, driven over stdin/stdout by the
 * Connection ID (RFC 9146) interop tests of trio_dtls_server.  Its line protocol is the one all
 * CID test clients speak (pion's too), so one Python harness drives both:
 *
 *   argv:   --host H --port P --identity ID --key HEX [--cid none|send-only|N]
 *           none: no connection_id extension; send-only: offer an empty CID ("I send yours,
 *           send me none"); N > 0: ask the server to put an N-byte CID in the records it sends
 *           (1..254: Scandium cannot encode a 255-byte CID).
 *   stdout: "connected" after a finished handshake; "received <text>" for each datagram
 *           received (UTF-8, malformed bytes replaced); "error <message>" before exiting 1.
 *   stdin:  "send <text>" sends <text> as one datagram; "reconnect" sends close_notify and does
 *           a new FULL handshake (not a resumption), then prints "connected" again; "quit" (or
 *           EOF) sends close_notify and exits 0.
 *
 * Scandium has no "connect" call: it starts a handshake when the first message is sent, and
 * sends that message once the handshake is done.  To report "connected" without putting a
 * datagram on the wire, connect() sends an empty marker message carrying the endpoint attribute
 * DTLS_HANDSHAKE_MODE=full (which also makes a reconnect a full handshake: Scandium would
 * otherwise resume the session).  Our EndpointContextMatcher lets the marker start the
 * handshake (no connection context yet) and refuses it once a context exists, so Scandium drops
 * it with an EndpointMismatchException instead of sending an empty application record: that
 * refusal is the moment the handshake has finished.
 */

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.eclipse.californium.elements.AddressEndpointContext;
import org.eclipse.californium.elements.DtlsEndpointContext;
import org.eclipse.californium.elements.EndpointContext;
import org.eclipse.californium.elements.EndpointContextMatcher;
import org.eclipse.californium.elements.exception.EndpointMismatchException;
import org.eclipse.californium.elements.MapBasedEndpointContext;
import org.eclipse.californium.elements.MessageCallback;
import org.eclipse.californium.elements.RawData;
import org.eclipse.californium.elements.config.Configuration;
import org.eclipse.californium.scandium.DTLSConnector;
import org.eclipse.californium.scandium.config.DtlsConfig;
import org.eclipse.californium.scandium.config.DtlsConfig.DtlsRole;
import org.eclipse.californium.scandium.config.DtlsConnectorConfig;
import org.eclipse.californium.scandium.dtls.pskstore.AdvancedSinglePskStore;

public final class ScandiumClient {

    /** How long a handshake may take before the client gives up (Scandium retransmits). */
    private static final long HANDSHAKE_TIMEOUT_S = 30;

    private static final PrintStream OUT =
            new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), true,
                    StandardCharsets.UTF_8);

    private final DTLSConnector connector;
    private final InetSocketAddress server;

    private ScandiumClient(DTLSConnector connector, InetSocketAddress server) {
        this.connector = connector;
        this.server = server;
    }

    /** One protocol line, written at once (the Scandium threads print too). */
    private static synchronized void emit(String line) {
        OUT.println(line);
        OUT.flush();
    }

    /** Prints "error <message>" and exits 1, from any thread. */
    private static void fail(String message) {
        emit("error " + message.replace('\n', ' '));
        Runtime.getRuntime().halt(1);
    }

    /** The marker message's context: the server's address and handshake mode "full". */
    private static boolean isMarker(EndpointContext context) {
        return context != null && DtlsEndpointContext.HANDSHAKE_MODE_FORCE_FULL
                .equals(context.getString(DtlsEndpointContext.KEY_HANDSHAKE_MODE));
    }

    /** Lets every message through, except the marker once a DTLS context exists. */
    private static final class MarkerMatcher implements EndpointContextMatcher {
        @Override
        public String getName() {
            return "handshake-marker";
        }

        @Override
        public Object getEndpointIdentity(EndpointContext context) {
            return context.getPeerAddress();
        }

        @Override
        public boolean isResponseRelatedToRequest(EndpointContext request, EndpointContext response) {
            return true;
        }

        @Override
        public boolean isToBeSent(EndpointContext message, EndpointContext connection) {
            return connection == null || !isMarker(message);
        }

        @Override
        public String toRelevantState(EndpointContext context) {
            return String.valueOf(context);
        }
    }

    /** Completes when the message is sent or refused (the marker: refused = handshake done). */
    private static final class Outcome implements MessageCallback {
        final CompletableFuture<Throwable> done = new CompletableFuture<>();

        @Override public void onConnecting() { }
        @Override public void onDtlsRetransmission(int flight) { }
        @Override public void onContextEstablished(EndpointContext context) { }
        @Override public void onSent() { done.complete(null); }
        @Override public void onError(Throwable error) { done.complete(error); }
    }

    /** Performs a full handshake with the server and prints "connected" when it has finished. */
    private void connect() throws Exception {
        EndpointContext marker = new MapBasedEndpointContext(server, null,
                DtlsEndpointContext.ATTRIBUE_HANDSHAKE_MODE_FORCE_FULL);
        Outcome outcome = new Outcome();
        connector.send(RawData.outbound(new byte[0], marker, outcome, false));
        Throwable error;
        try {
            error = outcome.done.get(HANDSHAKE_TIMEOUT_S, TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            fail("handshake timed out");
            return;
        }
        if (error instanceof EndpointMismatchException) {
            emit("connected");
        } else {
            fail("handshake failed: " + error);
        }
    }

    private void send(String text) {
        Outcome outcome = new Outcome();
        outcome.done.thenAccept(error -> {
            if (error != null) {
                fail("send failed: " + error);
            }
        });
        connector.send(RawData.outbound(text.getBytes(StandardCharsets.UTF_8),
                new AddressEndpointContext(server), outcome, false));
    }

    /**
     * Sends close_notify and waits until it has gone: close() runs on the connection's serial
     * executor, so a later message with handshake mode "none" is refused ("resumption
     * required") only after the alert was written.
     */
    private void close() throws Exception {
        connector.close(server);
        Outcome probe = new Outcome();
        connector.send(RawData.outbound(new byte[0],
                new MapBasedEndpointContext(server, null, DtlsEndpointContext.ATTRIBUTE_HANDSHAKE_MODE_NONE),
                probe, false));
        probe.done.get(5, TimeUnit.SECONDS);
    }

    private static String usage() {
        return "usage: --host H --port P --identity ID --key HEX [--cid none|send-only|N]";
    }

    public static void main(String[] args) throws Exception {
        String host = null;
        Integer port = null;
        String identity = null;
        byte[] key = null;
        String cid = "none";
        try {
            for (int i = 0; i < args.length; i += 2) {
                String value = args[i + 1];
                switch (args[i]) {
                    case "--host": host = value; break;
                    case "--port": port = Integer.parseInt(value); break;
                    case "--identity": identity = value; break;
                    case "--key": key = HexFormat.of().parseHex(value); break;
                    case "--cid": cid = value; break;
                    default: fail("unknown argument " + args[i] + "; " + usage());
                }
            }
        } catch (RuntimeException e) {
            fail("bad arguments (" + e + "); " + usage());
        }
        if (host == null || port == null || identity == null || key == null) {
            fail("missing arguments; " + usage());
        }
        Integer cidLength = null;  // null: no connection_id extension at all
        if (cid.equals("send-only")) {
            cidLength = 0;  // Scandium offers an empty CID
        } else if (!cid.equals("none")) {
            try {
                cidLength = Integer.parseInt(cid);
            } catch (NumberFormatException e) {
                cidLength = -1;
            }
            // RFC 9146 allows 255; Scandium 3.14 stops at 254 (its DatagramWriter keeps 0xff
            // as a "null" length) and would only fail when the handshake starts.
            if (cidLength < 1 || cidLength > 254) {
                fail("--cid must be none, send-only or 1..254 (Scandium's limit), not " + cid);
            }
        }

        InetAddress address = InetAddress.getByName(host);
        InetSocketAddress server = new InetSocketAddress(address, port);
        DtlsConfig.register();
        Configuration configuration = Configuration.createStandardWithoutFile();
        DtlsConnectorConfig.Builder builder = DtlsConnectorConfig.builder(configuration)
                .setAddress(new InetSocketAddress(address instanceof Inet6Address ? "::" : "0.0.0.0", 0))
                .set(DtlsConfig.DTLS_ROLE, DtlsRole.CLIENT_ONLY)
                .set(DtlsConfig.DTLS_CONNECTION_ID_LENGTH, cidLength)
                .setAdvancedPskStore(new AdvancedSinglePskStore(identity, key));
        DTLSConnector connector = new DTLSConnector(builder.build());
        connector.setEndpointContextMatcher(new MarkerMatcher());
        connector.setRawDataReceiver(data ->
                emit("received " + new String(data.getBytes(), StandardCharsets.UTF_8)));
        connector.start();

        ScandiumClient client = new ScandiumClient(connector, server);
        client.connect();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.startsWith("send ")) {
                client.send(line.substring("send ".length()));
            } else if (line.equals("reconnect")) {
                client.close();
                client.connect();
            } else if (line.equals("quit")) {
                break;
            } else if (!line.isBlank()) {
                fail("unknown command: " + line);
            }
        }
        client.close();
        connector.destroy();
        OUT.flush();
        Runtime.getRuntime().halt(0);
    }
}
