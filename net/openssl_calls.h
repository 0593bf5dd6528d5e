// Routes every OpenSSL call of the file that includes this through net/openssl.h's table
// (the binary links no OpenSSL). Include it after every <openssl/...> header, and only in
// .cc files: each name below becomes a macro, so a member or a local of the same name
// would be rewritten too. Taking a function's address (&SSL_free) bypasses the table and
// does not link: wrap the call in a lambda instead.
#pragma once

#include "net/openssl.h"

#define BIO_ctrl(...) (::cardnode::net::openssl().BIO_ctrl)(__VA_ARGS__)
#define BIO_ctrl_pending(...) (::cardnode::net::openssl().BIO_ctrl_pending)(__VA_ARGS__)
#define BIO_new(...) (::cardnode::net::openssl().BIO_new)(__VA_ARGS__)
#define BIO_read(...) (::cardnode::net::openssl().BIO_read)(__VA_ARGS__)
#define BIO_s_mem(...) (::cardnode::net::openssl().BIO_s_mem)(__VA_ARGS__)
#define BIO_write(...) (::cardnode::net::openssl().BIO_write)(__VA_ARGS__)
#define CRYPTO_memcmp(...) (::cardnode::net::openssl().CRYPTO_memcmp)(__VA_ARGS__)
#define ERR_clear_error(...) (::cardnode::net::openssl().ERR_clear_error)(__VA_ARGS__)
#define ERR_get_error(...) (::cardnode::net::openssl().ERR_get_error)(__VA_ARGS__)
#define ERR_reason_error_string(...) \
  (::cardnode::net::openssl().ERR_reason_error_string)(__VA_ARGS__)
#define OBJ_nid2sn(...) (::cardnode::net::openssl().OBJ_nid2sn)(__VA_ARGS__)
#define OPENSSL_cleanse(...) (::cardnode::net::openssl().OPENSSL_cleanse)(__VA_ARGS__)
#define OPENSSL_init_ssl(...) (::cardnode::net::openssl().OPENSSL_init_ssl)(__VA_ARGS__)
#define SHA256(...) (::cardnode::net::openssl().SHA256)(__VA_ARGS__)
#define SHA256_Final(...) (::cardnode::net::openssl().SHA256_Final)(__VA_ARGS__)
#define SHA256_Init(...) (::cardnode::net::openssl().SHA256_Init)(__VA_ARGS__)
#define SHA256_Update(...) (::cardnode::net::openssl().SHA256_Update)(__VA_ARGS__)
#define SSL_CIPHER_find(...) (::cardnode::net::openssl().SSL_CIPHER_find)(__VA_ARGS__)
#define SSL_CIPHER_get_handshake_digest(...) \
  (::cardnode::net::openssl().SSL_CIPHER_get_handshake_digest)(__VA_ARGS__)
#define SSL_CIPHER_get_name(...) (::cardnode::net::openssl().SSL_CIPHER_get_name)(__VA_ARGS__)
#define SSL_CTX_check_private_key(...) \
  (::cardnode::net::openssl().SSL_CTX_check_private_key)(__VA_ARGS__)
#define SSL_CTX_clear_options(...) (::cardnode::net::openssl().SSL_CTX_clear_options)(__VA_ARGS__)
#define SSL_CTX_ctrl(...) (::cardnode::net::openssl().SSL_CTX_ctrl)(__VA_ARGS__)
#define SSL_CTX_free(...) (::cardnode::net::openssl().SSL_CTX_free)(__VA_ARGS__)
#define SSL_CTX_get_ex_data(...) (::cardnode::net::openssl().SSL_CTX_get_ex_data)(__VA_ARGS__)
#define SSL_CTX_load_verify_locations(...) \
  (::cardnode::net::openssl().SSL_CTX_load_verify_locations)(__VA_ARGS__)
#define SSL_CTX_new(...) (::cardnode::net::openssl().SSL_CTX_new)(__VA_ARGS__)
#define SSL_CTX_set_ciphersuites(...) \
  (::cardnode::net::openssl().SSL_CTX_set_ciphersuites)(__VA_ARGS__)
#define SSL_CTX_set_ex_data(...) (::cardnode::net::openssl().SSL_CTX_set_ex_data)(__VA_ARGS__)
#define SSL_CTX_set_num_tickets(...) \
  (::cardnode::net::openssl().SSL_CTX_set_num_tickets)(__VA_ARGS__)
#define SSL_CTX_set_options(...) (::cardnode::net::openssl().SSL_CTX_set_options)(__VA_ARGS__)
#define SSL_CTX_set_psk_find_session_callback(...) \
  (::cardnode::net::openssl().SSL_CTX_set_psk_find_session_callback)(__VA_ARGS__)
#define SSL_CTX_set_psk_use_session_callback(...) \
  (::cardnode::net::openssl().SSL_CTX_set_psk_use_session_callback)(__VA_ARGS__)
#define SSL_CTX_set_verify(...) (::cardnode::net::openssl().SSL_CTX_set_verify)(__VA_ARGS__)
#define SSL_CTX_use_PrivateKey_file(...) \
  (::cardnode::net::openssl().SSL_CTX_use_PrivateKey_file)(__VA_ARGS__)
#define SSL_CTX_use_certificate_chain_file(...) \
  (::cardnode::net::openssl().SSL_CTX_use_certificate_chain_file)(__VA_ARGS__)
#define SSL_SESSION_free(...) (::cardnode::net::openssl().SSL_SESSION_free)(__VA_ARGS__)
#define SSL_SESSION_get0_cipher(...) \
  (::cardnode::net::openssl().SSL_SESSION_get0_cipher)(__VA_ARGS__)
#define SSL_SESSION_new(...) (::cardnode::net::openssl().SSL_SESSION_new)(__VA_ARGS__)
#define SSL_SESSION_set1_master_key(...) \
  (::cardnode::net::openssl().SSL_SESSION_set1_master_key)(__VA_ARGS__)
#define SSL_SESSION_set_cipher(...) (::cardnode::net::openssl().SSL_SESSION_set_cipher)(__VA_ARGS__)
#define SSL_SESSION_set_protocol_version(...) \
  (::cardnode::net::openssl().SSL_SESSION_set_protocol_version)(__VA_ARGS__)
#define SSL_ctrl(...) (::cardnode::net::openssl().SSL_ctrl)(__VA_ARGS__)
#define SSL_do_handshake(...) (::cardnode::net::openssl().SSL_do_handshake)(__VA_ARGS__)
#define SSL_free(...) (::cardnode::net::openssl().SSL_free)(__VA_ARGS__)
#define SSL_get_SSL_CTX(...) (::cardnode::net::openssl().SSL_get_SSL_CTX)(__VA_ARGS__)
#define SSL_get_current_cipher(...) (::cardnode::net::openssl().SSL_get_current_cipher)(__VA_ARGS__)
#define SSL_get_error(...) (::cardnode::net::openssl().SSL_get_error)(__VA_ARGS__)
#define SSL_get_version(...) (::cardnode::net::openssl().SSL_get_version)(__VA_ARGS__)
#define SSL_new(...) (::cardnode::net::openssl().SSL_new)(__VA_ARGS__)
#define SSL_read_ex(...) (::cardnode::net::openssl().SSL_read_ex)(__VA_ARGS__)
#define SSL_session_reused(...) (::cardnode::net::openssl().SSL_session_reused)(__VA_ARGS__)
#define SSL_set0_rbio(...) (::cardnode::net::openssl().SSL_set0_rbio)(__VA_ARGS__)
#define SSL_set0_wbio(...) (::cardnode::net::openssl().SSL_set0_wbio)(__VA_ARGS__)
#define SSL_set_accept_state(...) (::cardnode::net::openssl().SSL_set_accept_state)(__VA_ARGS__)
#define SSL_set_bio(...) (::cardnode::net::openssl().SSL_set_bio)(__VA_ARGS__)
#define SSL_set_connect_state(...) (::cardnode::net::openssl().SSL_set_connect_state)(__VA_ARGS__)
#define SSL_write_ex(...) (::cardnode::net::openssl().SSL_write_ex)(__VA_ARGS__)
#define TLS_client_method(...) (::cardnode::net::openssl().TLS_client_method)(__VA_ARGS__)
#define TLS_server_method(...) (::cardnode::net::openssl().TLS_server_method)(__VA_ARGS__)
