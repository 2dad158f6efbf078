import net from 'node:net';

/**
 * A TCP proxy in front of the server whose connections the test can cut, as a dropped network does: every open
 * socket is destroyed at once, and while it is `down` new connections are refused. (Chromium's offline
 * emulation fails new requests but leaves an established stream flowing, so it alone cannot cut one.)
 */
export async function startCutProxy(target: URL) {
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  let down = false;
  const server = net.createServer((client) => {
    if (down) return client.destroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    /** Cut every connection now, and refuse new ones until `restore()`. */
    cut() {
      down = true;
      for (const p of [...pairs]) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
    },
    restore() {
      down = false;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const p of pairs) {
          p.client.destroy();
          p.upstream.destroy();
        }
        server.close(() => resolve());
      }),
  };
}

export type CutProxy = Awaited<ReturnType<typeof startCutProxy>>;
