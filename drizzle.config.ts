import { defineConfig } from 'drizzle-kit';

// `npm run db:generate` diffs src/db/schema.ts against drizzle/ and writes a new SQL migration.
// Migrations are committed and applied at start-up by src/db/migrate.ts.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema.ts',
  out: './drizzle',
});
