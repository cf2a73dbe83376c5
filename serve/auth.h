// Who may call `serve`: API keys from a file and/or JWTs signed with a shared HS256 secret.
//
//   Auth auth({.api_key_file = "keys.txt", .jwt_secret_file = "jwt.secret"});
//   auth.check(request["Authorization"]);  // "Bearer <key or JWT>", else throws ApiError(401)
//
// API keys: one per line; blank lines and lines starting with '#' are ignored. A presented key is
// compared with every configured key in constant time (SHA-256 of both, CRYPTO_memcmp), so neither
// the matching key nor its length shows in the timing.
// JWTs: HS256 only (alg "none" and every other alg are refused); `exp` is required, `nbf` checked
// when present, both with 30 s leeway; `aud` (string or array) and `iss` checked when configured.
// Neither a token nor the secret ever appears in an error message.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace forge::serve {

struct AuthOptions {
  std::string api_key_file;     // "" = no API keys
  std::string jwt_secret_file;  // "" = no JWTs; the file's contents less a trailing newline
  std::string jwt_audience;     // "" = aud not checked
  std::string jwt_issuer;       // "" = iss not checked
};

class Auth {
 public:
  Auth() = default;  // no authentication: check() lets everything through
  // Reads the files; throws std::runtime_error naming the file (missing, no keys, short secret).
  explicit Auth(const AuthOptions& options);
  // The same from values in memory (tests); `source` names them in errors.
  static Auth from_values(const std::vector<std::string>& api_keys, std::string jwt_secret,
                          std::string jwt_audience = "", std::string jwt_issuer = "",
                          const std::string& source = "the JWT secret");

  bool enabled() const { return !key_digests_.empty() || !jwt_secret_.empty(); }

  // Throws ApiError(401, ..., code "invalid_api_key") unless `authorization_header` is
  // "Bearer <token>" with a configured key or a valid JWT. A no-op when !enabled().
  void check(std::string_view authorization_header) const;
  // The same at a given time (unix seconds), for tests of exp and nbf.
  void check(std::string_view authorization_header, int64_t now_unix) const;

  static constexpr int64_t kMinSecretBytes = 32;  // HS256 wants a key at least as long as its hash
  static constexpr int64_t kLeewaySeconds = 30;   // clock skew allowed on exp and nbf

 private:
  using Digest = std::array<unsigned char, 32>;
  bool key_matches(std::string_view token) const;
  void check_jwt(std::string_view token, int64_t now_unix) const;

  std::vector<Digest> key_digests_;  // SHA-256 of each key
  std::string jwt_secret_, jwt_audience_, jwt_issuer_;
};

}  // namespace forge::serve
