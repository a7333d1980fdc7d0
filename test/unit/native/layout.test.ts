/**
 * The addon and this JavaScript read the same records: the addon reports its
 * record sizes and enum lengths (native/napi_args.h SetLayout) and
 * src/native.ts refuses an addon whose layout differs (a stale build).
 */
import { describe, expect, it } from 'vitest';
import { checkLayout, expectedLayout, native } from '../../../src/native.js';

describe('native layout', () => {
  it('the built addon reports the layout the JavaScript reads with', () => {
    expect({ ...native().layout }).toEqual(expectedLayout());
  });

  it('an addon with another record size is refused by name, with the fix', () => {
    const want = expectedLayout().relayRecordFields;
    let err: unknown;
    try {
      checkLayout({ ...expectedLayout(), relayRecordFields: want + 1 });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({
      code: 'EADDONSTALE',
      message: expect.stringContaining(
        `(relayRecordFields: addon ${want + 1}, expected ${want}): rebuild with \`npm run build\``,
      ),
    });
  });

  it('an addon from before the layout existed is refused', () => {
    expect(() => checkLayout(undefined)).toThrow(
      `packedFlowLen: addon missing, expected ${expectedLayout().packedFlowLen}`,
    );
  });
});
