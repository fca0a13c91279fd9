import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Base64;
import java.util.List;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;

public class Secure {
    private static final SecureRandom RNG = new SecureRandom();

    public String findUser(Connection conn, String name) throws SQLException {
        String sql = "SELECT id FROM users WHERE name = ?";
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            ps.setString(1, name);
            try (ResultSet rs = ps.executeQuery()) {
                return rs.next() ? rs.getString(1) : null;
            }
        }
    }

    public String token() {
        byte[] b = new byte[32];
        RNG.nextBytes(b);
        return Base64.getUrlEncoder().withoutPadding().encodeToString(b);
    }

    public byte[] digest(byte[] data) throws Exception {
        return MessageDigest.getInstance("SHA-256").digest(data);
    }

    public byte[] encrypt(byte[] key, byte[] iv, byte[] plain) throws Exception {
        Cipher c = Cipher.getInstance("AES/GCM/NoPadding");
        c.init(Cipher.ENCRYPT_MODE, new SecretKeySpec(key, "AES"), new GCMParameterSpec(128, iv));
        return c.doFinal(plain);
    }

    public byte[] readInside(String base, String name) throws IOException {
        Path root = Paths.get(base).toRealPath();
        Path p = root.resolve(name).normalize();
        if (!p.startsWith(root)) {
            throw new SecurityException("path escapes base directory");
        }
        return Files.readAllBytes(p);
    }

    public int listDir(String dir) throws Exception {
        ProcessBuilder pb = new ProcessBuilder(List.of("ls", "-l", dir));
        Process p = pb.start();
        return p.waitFor();
    }

    public int get(int[] a, int i) {
        if (i < 0 || i >= a.length) {
            throw new IndexOutOfBoundsException();
        }
        return a[i];
    }

    public String password() {
        return System.getenv("DB_PASSWORD");
    }
}
