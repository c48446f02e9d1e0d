// A real OpenID Provider (panva/oidc-provider 9, certified) for EngineX's SSO tests.
// Started by tests/sso_idp.py on 127.0.0.1; configured by the JSON in $OIDC_PROVIDER_CONFIG:
//   {"port": 0, "clients": [{client_id, client_secret, redirect_uris}],
//    "accounts": {"<sub>": {"email": ..., "email_verified": true, "name": ..., "groups": [...]}},
//    "jwks": {"keys": [<private JWK>]}}
// Sign-in uses the provider's development interactions: any listed account id as the login,
// any password. Prints "READY <issuer>" once it listens.
import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_PROVIDER_CONFIG);
const port = config.port;
const issuer = `http://127.0.0.1:${port}`;
const accounts = config.accounts;

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: config.jwks,
  cookies: { keys: ['enginex-test-oidc-provider-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // Put the granted claims into the id_token (as Okta/Entra/Keycloak can be set up to do).
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...accounts[id] }; } };
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
