import type { Request } from 'express';
import type { AppContext } from '../context.js';
import { bearerToken } from '../http/auth.js';
import { AppError } from '../http/errors.js';
import { sessionPrincipal, type Principal } from '../http/principal.js';
import type { SessionRow } from '../sessions/sessions.service.js';
import { OpenAiError } from './errors.js';

/**
 * The session whose token is the API key (`Authorization: Bearer sk_…`, as the SDK sends `apiKey`). EventSource
 * cannot send headers, so a stream may carry it as `?access_token=` (`allowQuery`).
 */
export async function authenticate(ctx: AppContext, req: Request, allowQuery = false): Promise<{ session: SessionRow; principal: Principal }> {
  const token = bearerToken(req, allowQuery);
  if (!token) {
    throw new OpenAiError(
      401,
      "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Your API key is a Sluice session token.",
      'invalid_request_error',
    );
  }
  try {
    // The request's budget count (and a stream's slot) ride on this statement.
    const session = await ctx.sessions.authenticate(token, undefined, req);
    return { session, principal: sessionPrincipal(session) };
  } catch (err) {
    if (err instanceof AppError && err.status === 401) {
      throw new OpenAiError(401, 'Incorrect API key provided. Use the token of a Sluice session as the API key.', 'invalid_request_error', 'invalid_api_key');
    }
    throw err;
  }
}
