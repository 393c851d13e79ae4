import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.graphdb.Transaction;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

/**
 * A real Neo4j Community server (Bolt + auth) run in-process, for the test suite and benchmarks,
 * so tests need only Java and Maven Central instead of Docker or a Neo4j install.
 *
 * <p>Usage: {@code java -Xmx1g -cp CLASSPATH Neo4jTestServer DATA_DIR BOLT_PORT} with the password
 * in the environment variable {@code NEO4J_TEST_PASSWORD} (kept off the command line so it does not
 * show in process listings). Prints {@code NEO4J_READY bolt://127.0.0.1:PORT} once it accepts
 * connections, then runs until standard input closes (the parent died or let go) or SIGTERM.
 */
public final class Neo4jTestServer {
    private Neo4jTestServer() {}

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable t) {
            // Neo4j's non-daemon threads would otherwise keep a failed JVM alive until the timeout.
            t.printStackTrace();
            System.exit(1);
        }
    }

    private static void run(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: Neo4jTestServer DATA_DIR BOLT_PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        String password = System.getenv("NEO4J_TEST_PASSWORD");
        if (password == null || password.length() < 8) {
            System.err.println("NEO4J_TEST_PASSWORD must be set to at least 8 characters");
            System.exit(2);
        }

        String pageCache = System.getenv().getOrDefault("NEO4J_TEST_PAGECACHE_MB", "256");
        DatabaseManagementService service = new DatabaseManagementServiceBuilder(home)
                .setUserLogProvider(new Log4jLogProvider(System.err, Level.INFO))
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(Long.parseLong(pageCache)))
                .setConfig(GraphDatabaseSettings.memory_transaction_global_max_size, 0L)
                .setConfig(GraphDatabaseSettings.memory_transaction_database_max_size, 0L)
                .setConfig(GraphDatabaseSettings.memory_transaction_max_size, 0L)
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                // Netty's default graceful-shutdown quiet periods make stop() take ~11 s.
                .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                .setConfig(
                        GraphDatabaseInternalSettings.netty_server_shutdown_timeout,
                        Duration.ofSeconds(2))
                .build();
        Runtime.getRuntime().addShutdownHook(new Thread(service::shutdown, "neo4j-shutdown"));

        // Embedded transactions bypass auth, so the initial password can be set directly here.
        GraphDatabaseService system = service.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME);
        try (Transaction tx = system.beginTx()) {
            tx.execute(
                    "ALTER USER neo4j SET PASSWORD $pw CHANGE NOT REQUIRED", Map.of("pw", password))
                    .close();
            tx.commit();
        }

        Thread stdinWatcher = new Thread(Neo4jTestServer::exitOnStdinEof, "stdin-watcher");
        stdinWatcher.setDaemon(true);
        stdinWatcher.start();

        System.out.println("NEO4J_READY bolt://127.0.0.1:" + port);
        System.out.flush();
        new CountDownLatch(1).await(); // the shutdown hook ends the process
    }

    /** Exit (running the shutdown hook) when the parent closes our stdin or dies. */
    private static void exitOnStdinEof() {
        InputStream in = System.in;
        byte[] buf = new byte[256];
        try {
            while (in.read(buf) >= 0) {
                // discard anything written; only EOF matters
            }
        } catch (IOException e) {
            // a broken pipe means the parent is gone as well
        }
        System.exit(0);
    }
}
