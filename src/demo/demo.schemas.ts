import { z } from 'zod';
import { perConfig, requestText } from '../http/validate.js';

/** The demo's query: what its route validates with and what the OpenAPI document describes. */
export const demoQuery = perConfig((c) =>
  z.object({
    request: requestText(c.JOB_REQUEST_MAX_CHARS).meta({ description: 'What to ask the model.', example: 'Say hello' }),
  }),
);
