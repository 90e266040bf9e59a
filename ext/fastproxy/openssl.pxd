# The parts of OpenSSL 3 (libssl, libcrypto) that _tls.pyx uses: declarations only.
# Several of these are macros in the headers (marked); Cython calls them as written.

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct X509
    ctypedef struct X509_NAME
    ctypedef struct X509_NAME_ENTRY
    ctypedef struct ASN1_OBJECT
    ctypedef struct ASN1_STRING
    ctypedef struct ASN1_INTEGER
    ctypedef struct SSL_CIPHER

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_FILETYPE_PEM
        TLS1_2_VERSION
        TLS1_3_VERSION
        TLSEXT_NAMETYPE_host_name
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_TLSEXT_ERR_NOACK
        SSL_AD_UNRECOGNIZED_NAME
        OPENSSL_NPN_NEGOTIATED
        SSL_SENT_SHUTDOWN
        SSL_RECEIVED_SHUTDOWN

    unsigned long SSL_OP_ALL
    unsigned long SSL_OP_NO_COMPRESSION
    unsigned long SSL_OP_NO_RENEGOTIATION
    unsigned long SSL_OP_CIPHER_SERVER_PREFERENCE
    unsigned long SSL_OP_SINGLE_DH_USE
    unsigned long SSL_OP_SINGLE_ECDH_USE
    unsigned long SSL_OP_NO_SSLv2
    unsigned long SSL_OP_NO_SSLv3
    unsigned long SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS
    long SSL_MODE_RELEASE_BUFFERS

    const SSL_METHOD* TLS_server_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    unsigned long SSL_CTX_set_options(SSL_CTX* ctx, unsigned long options)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)  # macro
    long SSL_set_mode(SSL* ssl, long mode)  # macro
    long SSL_clear_mode(SSL* ssl, long mode)  # macro
    void SSL_CTX_set_read_ahead(SSL_CTX* ctx, int yes)  # macro
    int SSL_has_pending(const SSL* ssl)
    int SSL_free_buffers(SSL* ssl)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)  # macro
    int SSL_CTX_set_max_proto_version(SSL_CTX* ctx, int version)  # macro
    int SSL_CTX_set_cipher_list(SSL_CTX* ctx, const char* text)
    int SSL_CTX_get_security_level(const SSL_CTX* ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* path)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* path, int kind)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile, const char* capath)
    ctypedef int (*verify_cb)(int, void*)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, verify_cb callback)
    int SSL_CTX_get_verify_mode(const SSL_CTX* ctx)
    int SSL_CTX_set_session_id_context(SSL_CTX* ctx, const unsigned char* sid, unsigned int n)
    ctypedef int (*pem_password_cb)(char* buf, int size, int rwflag, void* userdata)
    void SSL_CTX_set_default_passwd_cb(SSL_CTX* ctx, pem_password_cb cb)
    int SSL_select_next_proto(unsigned char** out, unsigned char* outlen,
                              const unsigned char* server, unsigned int server_len,
                              const unsigned char* client, unsigned int client_len)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    void SSL_set_bio(SSL* ssl, BIO* rbio, BIO* wbio)
    void SSL_set_accept_state(SSL* ssl)
    SSL_CTX* SSL_set_SSL_CTX(SSL* ssl, SSL_CTX* ctx)
    SSL_CTX* SSL_get_SSL_CTX(const SSL* ssl)
    const char* SSL_get_servername(const SSL* ssl, int kind)
    int SSL_do_handshake(SSL* ssl)
    int SSL_is_init_finished(const SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_pending(const SSL* ssl)
    int SSL_shutdown(SSL* ssl)
    int SSL_get_shutdown(const SSL* ssl)
    int SSL_get_error(const SSL* ssl, int ret)
    X509* SSL_get1_peer_certificate(const SSL* ssl)
    long SSL_get_verify_result(const SSL* ssl)
    int SSL_get_verify_mode(const SSL* ssl)
    const char* SSL_get_version(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* c)
    const char* SSL_CIPHER_get_version(const SSL_CIPHER* c)
    int SSL_CIPHER_get_bits(const SSL_CIPHER* c, int* alg_bits)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* n)

# Callbacks run inside the handshake with the GIL held (the caller holds it): not nogil.
cdef extern from "openssl/ssl.h":
    ctypedef int (*servername_cb)(SSL* ssl, int* alert, void* arg) noexcept
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX* ctx, servername_cb cb)  # macro
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX* ctx, void* arg)  # macro
    ctypedef int (*alpn_select_cb)(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                                   const unsigned char* client, unsigned int client_len,
                                   void* arg) noexcept
    void SSL_CTX_set_alpn_select_cb(SSL_CTX* ctx, alpn_select_cb cb, void* arg)

cdef extern from "openssl/bio.h" nogil:
    const BIO_METHOD* BIO_s_mem()
    BIO* BIO_new(const BIO_METHOD* kind)
    int BIO_free(BIO* bio)
    int BIO_write(BIO* bio, const void* data, int n)
    int BIO_read(BIO* bio, void* data, int n)
    size_t BIO_ctrl_pending(BIO* bio)
    long BIO_set_mem_eof_return(BIO* bio, int v)  # macro
    long BIO_get_mem_data(BIO* bio, char** pp)  # macro
    int BIO_reset(BIO* bio)  # macro
    # A BIO of our own (_tls's output BIO): its method table and per-BIO state.
    int BIO_TYPE_SOURCE_SINK
    int BIO_CTRL_FLUSH
    int BIO_CTRL_PENDING
    int BIO_CTRL_WPENDING
    int BIO_get_new_index()
    BIO_METHOD* BIO_meth_new(int kind, const char* name)
    int BIO_meth_set_write(BIO_METHOD* m, int (*write)(BIO*, const char*, int) noexcept nogil)
    int BIO_meth_set_ctrl(BIO_METHOD* m, long (*ctrl)(BIO*, int, long, void*) noexcept nogil)
    int BIO_meth_set_create(BIO_METHOD* m, int (*create)(BIO*) noexcept nogil)
    void BIO_set_data(BIO* bio, void* data)
    void* BIO_get_data(BIO* bio)
    void BIO_set_init(BIO* bio, int init)
    void BIO_clear_retry_flags(BIO* bio)  # macro

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()
    unsigned long ERR_peek_last_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t n)

cdef extern from "openssl/x509.h" nogil:
    void X509_free(X509* x)
    int i2d_X509(X509* x, unsigned char** out)
    X509_NAME* X509_get_subject_name(const X509* x)
    X509_NAME* X509_get_issuer_name(const X509* x)
    ASN1_INTEGER* X509_get_serialNumber(X509* x)
    int X509_NAME_entry_count(const X509_NAME* name)
    X509_NAME_ENTRY* X509_NAME_get_entry(const X509_NAME* name, int loc)
    int X509_NAME_ENTRY_set(const X509_NAME_ENTRY* entry)
    ASN1_OBJECT* X509_NAME_ENTRY_get_object(const X509_NAME_ENTRY* entry)
    ASN1_STRING* X509_NAME_ENTRY_get_data(const X509_NAME_ENTRY* entry)
    long X509_V_OK

cdef extern from "openssl/objects.h" nogil:
    int OBJ_obj2txt(char* buf, int n, const ASN1_OBJECT* obj, int no_name)

cdef extern from "openssl/asn1.h" nogil:
    int ASN1_STRING_to_UTF8(unsigned char** out, const ASN1_STRING* s)
    int i2a_ASN1_INTEGER(BIO* bio, const ASN1_INTEGER* a)

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_free(void* p)  # macro
    enum:
        OPENSSL_VERSION_STRING  # "3.0.13": the version alone (OpenSSL >= 3.0)
    const char* OpenSSL_version(int t)
