/** Where `--redis` points: standalone, Sentinel or Cluster URLs, their errors and their redaction. */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { parseRedisUrl, redactRedisUrl } from '../../../src/redis/client.js';

describe('parseRedisUrl', () => {
  it.each([
    ['redis://127.0.0.1:6379', { kind: 'standalone', url: 'redis://127.0.0.1:6379' }],
    [
      'redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/mymaster',
      {
        kind: 'sentinel',
        tls: false,
        nodes: [
          { host: '10.0.0.1', port: 26379 },
          { host: '10.0.0.2', port: 26380 },
          { host: '10.0.0.3', port: 26379 },
        ],
        name: 'mymaster',
        db: 0,
      },
    ],
    [
      'rediss+sentinel://gw:p%40ss@[::1]:5000/m/3',
      {
        kind: 'sentinel',
        tls: true,
        username: 'gw',
        password: 'p@ss',
        nodes: [{ host: '::1', port: 5000 }],
        name: 'm',
        db: 3,
      },
    ],
    [
      'redis+cluster://:pw@a:7000,b',
      {
        kind: 'cluster',
        tls: false,
        password: 'pw',
        nodes: [
          { host: 'a', port: 7000 },
          { host: 'b', port: 6379 },
        ],
      },
    ],
    [
      'redis+sentinel://:nodes@10.0.0.1/m?sentinelUsername=watch&sentinelPassword=s%26p',
      {
        kind: 'sentinel',
        tls: false,
        password: 'nodes',
        nodes: [{ host: '10.0.0.1', port: 26379 }],
        name: 'm',
        db: 0,
        sentinelUsername: 'watch',
        sentinelPassword: 's&p',
      },
    ],
  ])('%s', (url, target) => {
    expect(parseRedisUrl(url)).toEqual(target);
  });

  it.each([
    ['http://127.0.0.1:6379', /scheme must be redis:\/\/, rediss:\/\/ \(TLS\), redis\+sentinel:\/\/ or redis\+cluster/],
    ['redis://127.0.0.1:6379/x', /database "\/x" must be a number/],
    ['redis+sentinel://10.0.0.1:26379', /expected redis\+sentinel:\/\/host:port\[,host:port…\]\/mastername\[\/db\]/],
    ['redis+sentinel://10.0.0.1:26379/m/x', /database "\/x" must be a number/],
    ['redis+sentinel:///m', /no host/],
    ['redis+cluster://a:7000,b:99999', /"b:99999" is not host:port/],
    ['redis+cluster://a:7000/0', /a Redis Cluster has no database/],
    ['redis+cluster://:secret@a:7000,,b', /"" is not host:port/],
    [
      'redis+sentinel://a/m?sentinelPass=secret',
      /unknown option "sentinelPass" \(a Sentinel URL takes sentinelUsername/,
    ],
    ['redis+cluster://a:7000?sentinelPassword=secret', /a Redis Cluster URL takes no \?options/],
  ])('rejects %s naming the fix', (url, message) => {
    const err = (() => {
      try {
        parseRedisUrl(url);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).not.toContain('secret');
  });
});

describe('redactRedisUrl', () => {
  it.each([
    ['redis://:pw@127.0.0.1:6379', 'redis://:***@127.0.0.1:6379'],
    ['redis+sentinel://u:pw@a:1,b:2/m', 'redis+sentinel://u:***@a:1,b:2/m'],
    ['rediss+cluster://u@a:1', 'rediss+cluster://u@a:1'],
    ['redis+cluster://a:1,b:2', 'redis+cluster://a:1,b:2'],
    ['redis+sentinel://a:1/m?sentinelPassword=sp', 'redis+sentinel://a:1/m?sentinelPassword=***'],
    [
      'redis+sentinel://:pw@a:1/m/2?sentinelUsername=u&sentinelPassword=sp',
      'redis+sentinel://:***@a:1/m/2?sentinelUsername=u&sentinelPassword=***',
    ],
  ])('%s → %s', (url, shown) => {
    expect(redactRedisUrl(url)).toBe(shown);
  });
});
