// One HTTPS request through the JVM's default trust store, the one Elasticsearch uses for
// its inference endpoints' calls (javax.net.ssl.trustStore* from jvm.options.d, or the
// JDK's cacerts without them). Run in single-file source mode:
//   java @airgap-inference-truststore.options TrustProbe.java https://127.0.0.1:PORT/
// Prints "TRUSTED <status>" (exit 0) or "REFUSED <exception>: <message>" (exit 3).
import java.net.URI;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLException;

public class TrustProbe {
    public static void main(String[] args) throws Exception {
        HttpsURLConnection c = (HttpsURLConnection) URI.create(args[0]).toURL().openConnection();
        c.setConnectTimeout(10000);
        c.setReadTimeout(10000);
        try {
            System.out.println("TRUSTED " + c.getResponseCode());
        } catch (SSLException e) {
            Throwable root = e;
            while (root.getCause() != null) {
                root = root.getCause();
            }
            System.out.println("REFUSED " + e.getClass().getName() + ": " + e.getMessage()
                    + " | " + root.getClass().getName() + ": " + root.getMessage());
            System.exit(3);
        }
    }
}
