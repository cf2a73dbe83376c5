#include "serve/auth.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "serve/protocol.h"

namespace forge::serve {

using nlohmann::json;

namespace {

[[noreturn]] void unauthorized(const std::string& message) {
  throw ApiError(401, message, "invalid_request_error", "", "invalid_api_key");
}

std::string read_file(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{} {}: cannot read the file", flag, path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string_view trim(std::string_view s) {
  const char* space = " \t\r\n";
  size_t begin = s.find_first_not_of(space);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(space) - begin + 1);
}

std::array<unsigned char, 32> sha256(std::string_view data) {
  std::array<unsigned char, 32> out{};
  unsigned int length = 0;
  if (!EVP_Digest(data.data(), data.size(), out.data(), &length, EVP_sha256(), nullptr) ||
      length != out.size())
    throw std::runtime_error("auth: SHA-256 failed (OpenSSL)");
  return out;
}

// base64url without padding (RFC 7515 section 2); false on any other character.
bool base64url_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t bits = 0;
  int count = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '-')
      v = 62;
    else if (c == '_')
      v = 63;
    else
      return false;
    bits = (bits << 6) | uint32_t(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out.push_back(char((bits >> count) & 0xFF));
    }
  }
  return count < 6;  // a single leftover character (6 bits) cannot end a valid encoding
}

json parse_segment(std::string_view segment, const char* what) {
  std::string text;
  if (!base64url_decode(segment, text))
    unauthorized(fmt::format("invalid token: its {} is not base64url", what));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) unauthorized(fmt::format("invalid token: its {} is not a JSON object", what));
  return j;
}

std::string short_secret(const std::string& source, size_t bytes) {
  return fmt::format(
      "{}: the secret is {} bytes; HS256 needs at least {} (e.g. openssl rand -hex 32)", source,
      bytes, Auth::kMinSecretBytes);
}

// A numeric claim as seconds; absent -> NaN.
double numeric_claim(const json& payload, const char* name) {
  auto it = payload.find(name);
  if (it == payload.end()) return std::nan("");
  if (!it->is_number() || !std::isfinite(it->get<double>()))
    unauthorized(fmt::format("invalid token: '{}' must be a number (seconds since 1970)", name));
  return it->get<double>();
}

}  // namespace

Auth::Auth(const AuthOptions& options) {
  std::vector<std::string> keys;
  if (!options.api_key_file.empty()) {
    std::istringstream lines(read_file(options.api_key_file, "--api-key-file"));
    for (std::string line; std::getline(lines, line);) {
      std::string_view key = trim(line);
      if (key.empty() || key.front() == '#') continue;
      keys.emplace_back(key);
    }
    if (keys.empty())
      throw std::runtime_error(fmt::format(
          "--api-key-file {}: no keys (one key per line; blank lines and lines starting with # "
          "are ignored)",
          options.api_key_file));
  }
  std::string secret;
  if (!options.jwt_secret_file.empty()) {
    secret = read_file(options.jwt_secret_file, "--jwt-secret-file");
    if (!secret.empty() && secret.back() == '\n') secret.pop_back();
    if (!secret.empty() && secret.back() == '\r') secret.pop_back();
    if (int64_t(secret.size()) < kMinSecretBytes)  // an empty file too
      throw std::runtime_error(
          short_secret("--jwt-secret-file " + options.jwt_secret_file, secret.size()));
  }
  *this = from_values(keys, std::move(secret), options.jwt_audience, options.jwt_issuer,
                      "--jwt-secret-file " + options.jwt_secret_file);
}

Auth Auth::from_values(const std::vector<std::string>& api_keys, std::string jwt_secret,
                       std::string jwt_audience, std::string jwt_issuer,
                       const std::string& source) {
  Auth a;
  for (const std::string& key : api_keys) {
    if (key.empty()) throw std::runtime_error("auth: an API key is empty");
    a.key_digests_.push_back(sha256(key));
  }
  if (!jwt_secret.empty() && int64_t(jwt_secret.size()) < kMinSecretBytes)
    throw std::runtime_error(short_secret(source, jwt_secret.size()));
  if (jwt_secret.empty() && (!jwt_audience.empty() || !jwt_issuer.empty()))
    throw std::runtime_error("--jwt-audience and --jwt-issuer need --jwt-secret-file");
  a.jwt_secret_ = std::move(jwt_secret);
  a.jwt_audience_ = std::move(jwt_audience);
  a.jwt_issuer_ = std::move(jwt_issuer);
  return a;
}

void Auth::check(std::string_view authorization_header) const {
  check(authorization_header, int64_t(std::time(nullptr)));
}

void Auth::check(std::string_view header, int64_t now_unix) const {
  if (!enabled()) return;
  header = trim(header);
  if (header.empty())
    unauthorized("missing Authorization header; send 'Authorization: Bearer <API key or token>'");
  constexpr std::string_view scheme = "bearer ";
  bool bearer = header.size() > scheme.size();
  for (size_t i = 0; bearer && i < scheme.size(); ++i)
    bearer = std::tolower(static_cast<unsigned char>(header[i])) == scheme[i];
  if (!bearer) unauthorized("the Authorization header must be 'Bearer <API key or token>'");
  std::string_view token = trim(header.substr(scheme.size()));
  if (key_matches(token)) return;
  // Three dot-separated segments: a JWT (API keys rarely have two dots; they were tried first).
  if (!jwt_secret_.empty() && std::count(token.begin(), token.end(), '.') == 2)
    return check_jwt(token, now_unix);
  unauthorized(key_digests_.empty() ? "invalid token" : "incorrect API key provided");
}

bool Auth::key_matches(std::string_view token) const {
  if (key_digests_.empty()) return false;
  const Digest presented = sha256(token);
  int matches = 0;
  for (const Digest& key : key_digests_)  // every key, no early exit
    matches |= CRYPTO_memcmp(presented.data(), key.data(), key.size()) == 0;
  return matches != 0;
}

void Auth::check_jwt(std::string_view token, int64_t now_unix) const {
  const size_t dot1 = token.find('.'), dot2 = token.find('.', dot1 + 1);
  const std::string_view header_b64 = token.substr(0, dot1),
                         payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1),
                         signature_b64 = token.substr(dot2 + 1);

  const json header = parse_segment(header_b64, "header");
  auto alg = header.find("alg");
  if (alg == header.end() || !alg->is_string() || alg->get<std::string>() != "HS256")
    unauthorized("invalid token: only alg HS256 is accepted");
  if (header.contains("crit"))
    unauthorized("invalid token: 'crit' header parameters are not supported");

  // HMAC-SHA256 over "header.payload" as sent, compared in constant time.
  std::string signature;
  if (!base64url_decode(signature_b64, signature) || signature.size() != 32)
    unauthorized("invalid token: bad signature");
  const std::string_view signed_part = token.substr(0, dot2);
  unsigned char expected[EVP_MAX_MD_SIZE];
  unsigned int expected_length = 0;
  if (!HMAC(EVP_sha256(), jwt_secret_.data(), int(jwt_secret_.size()),
            reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size(),
            expected, &expected_length) ||
      expected_length != 32)
    throw std::runtime_error("auth: HMAC-SHA256 failed (OpenSSL)");
  if (CRYPTO_memcmp(expected, signature.data(), 32) != 0)
    unauthorized("invalid token: bad signature");

  const json payload = parse_segment(payload_b64, "payload");
  const double exp = numeric_claim(payload, "exp"), nbf = numeric_claim(payload, "nbf");
  if (std::isnan(exp)) unauthorized("invalid token: no 'exp' claim (tokens must expire)");
  if (double(now_unix) > exp + double(kLeewaySeconds)) unauthorized("invalid token: expired");
  if (!std::isnan(nbf) && double(now_unix) + double(kLeewaySeconds) < nbf)
    unauthorized("invalid token: not valid yet ('nbf' is in the future)");
  if (!jwt_issuer_.empty()) {
    auto iss = payload.find("iss");
    if (iss == payload.end() || !iss->is_string() || iss->get<std::string>() != jwt_issuer_)
      unauthorized("invalid token: wrong or missing issuer ('iss')");
  }
  if (!jwt_audience_.empty()) {
    auto aud = payload.find("aud");
    bool ok = false;
    if (aud != payload.end() && aud->is_string()) ok = aud->get<std::string>() == jwt_audience_;
    if (aud != payload.end() && aud->is_array())
      for (const json& a : *aud)
        ok = ok || (a.is_string() && a.get<std::string>() == jwt_audience_);
    if (!ok) unauthorized("invalid token: wrong or missing audience ('aud')");
  }
}

}  // namespace forge::serve
